"""appstack's Pulumi language runtime plugin for Python (``pulumi-language-python``).

The official plugin is a Go program whose module the Go module proxy here refuses (403), so this is
a small replacement written in Python on top of grpcio and the gRPC stubs that ship in the Pulumi
Python SDK (``pulumi.runtime.proto``). See tools/README-toolchain.md.

Protocol (as the engine uses it): the engine starts the plugin with some flags (``--tracing X``,
``-v=N``, ``--logtostderr``, historically ``-root=...``, ``-virtualenv=...``, ``-toolchain=...``;
unknown ones are ignored) and the engine's gRPC address as the last positional argument. The
plugin serves the ``pulumirpc.LanguageRuntime`` service on 127.0.0.1:<free port>, prints only the
port on the first line of stdout, and serves until it is killed (the engine kills its process
group).

``Run`` runs the SDK's ``pulumi-language-python-exec`` (found next to the path the engine started
this plugin with, i.e. in the toolchain bin dir, else on PATH) with the project's virtualenv python.
``RunPlugin`` runs a plugin written in Python, here the policy pack (``policy/``), as the official
host does: ``<venv python> <plugin dir> ARGS``, its output streamed back to the engine.
Everything else the official host does (installing dependencies, codegen, templates, packing,
linking) is not implemented: those calls answer UNIMPLEMENTED or report that there is nothing to
do.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import empty_pb2, json_format
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

HERE = os.path.dirname(os.path.realpath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
EXEC_NAME = "pulumi-language-python-exec"
# The exec script's code for "the program already showed the user an actionable error".
BAIL_EXIT_CODE = 32
MAX_MESSAGE = 400 * 1024 * 1024  # like the engine's own gRPC limits

_verbose = 0


def log(msg: str, level: int = 1) -> None:
    """Diagnostics go to stderr, and only when asked for: the engine shows a plugin's stderr."""
    if _verbose >= level or os.environ.get("APPSTACK_LANGHOST_DEBUG"):
        print(f"pulumi-language-python[appstack]: {msg}", file=sys.stderr, flush=True)


def pinned_version() -> str:
    """The `pulumi==X` pin of the repo (the CLI is built at the same version), else the SDK's."""
    try:
        with open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8") as f:
            for line in f:
                m = re.match(r"\s*pulumi\s*==\s*([^\s#;]+)", line, re.I)
                if m:
                    return m.group(1)
    except OSError:
        pass
    try:
        from importlib.metadata import version

        return version("pulumi")
    except Exception:
        return "0.0.0"


VERSION = pinned_version()


def parse_args(argv: list[str]) -> dict:
    """Go-flag style: -name, --name, -name=value, --name value (for the flags that take a value)."""
    takes_value = {"tracing", "root", "virtualenv", "toolchain", "typechecker", "binary", "v"}
    opts: dict = {"flags": {}, "positional": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a not in ("-", "--"):
            name = a.lstrip("-")
            if "=" in name:
                name, value = name.split("=", 1)
            elif name in takes_value and i + 1 < len(argv) and i + 1 < len(argv) - 1:
                # never swallow the last argument: that is the engine address
                i += 1
                value = argv[i]
            else:
                value = "true"
            opts["flags"][name] = value
        else:
            opts["positional"].append(a)
        i += 1
    return opts


def find_exec() -> str | None:
    """pulumi-language-python-exec: $PULUMI_LANGUAGE_PYTHON_EXEC, next to the path the engine ran
    us by (the toolchain's bin dir), next to our own real path, else on PATH."""
    cands = []
    if os.environ.get("PULUMI_LANGUAGE_PYTHON_EXEC"):
        cands.append(os.environ["PULUMI_LANGUAGE_PYTHON_EXEC"])
    argv0 = os.environ.get("APPSTACK_LANGHOST_ARGV0")
    if argv0 and os.sep in argv0:
        cands.append(os.path.join(os.path.dirname(os.path.abspath(argv0)), EXEC_NAME))
    cands.append(os.path.join(HERE, EXEC_NAME))
    for c in cands:
        if os.path.isfile(c):
            return c
    return shutil.which(EXEC_NAME)


def read_project_runtime_options(root: str) -> dict:
    """runtime.options from Pulumi.yaml in `root` (fallback when the engine sends no options)."""
    for name in ("Pulumi.yaml", "Pulumi.yml"):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        try:
            import yaml  # PyYAML, if this python has it

            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
            rt = doc.get("runtime")
            if isinstance(rt, dict) and isinstance(rt.get("options"), dict):
                return dict(rt["options"])
            return {}
        except ImportError:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            m = re.search(r"^\s+virtualenv:\s*['\"]?([^'\"\n#]+?)['\"]?\s*$", text, re.M)
            return {"virtualenv": m.group(1)} if m else {}
        except Exception as e:
            log(f"cannot read {path}: {e}")
            return {}
    return {}


def parse_env(entries) -> dict[str, str]:
    """``KEY=value`` entries (the engine's environment for a plugin) as a dict; the last wins."""
    env: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if sep and key:
            env[key] = value
    return env


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM a plugin whose stream the engine dropped; SIGKILL if it lingers."""
    if p.poll() is not None:
        return
    with contextlib.suppress(OSError):
        p.terminate()

    def reap() -> None:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                p.kill()

    threading.Thread(target=reap, daemon=True).start()


def _stream_output(p: subprocess.Popen):
    """RunPluginResponse chunks of the process's stdout and stderr, in the order they arrive."""
    chunks: queue.Queue = queue.Queue()

    def pump(stream, field: str) -> None:
        try:
            while True:
                data = os.read(stream.fileno(), 65536)
                if not data:
                    break
                chunks.put((field, data))
        finally:
            stream.close()
            chunks.put((field, None))

    for stream, field in ((p.stdout, "stdout"), (p.stderr, "stderr")):
        threading.Thread(target=pump, args=(stream, field), daemon=True).start()
    open_streams = 2
    while open_streams:
        field, data = chunks.get()
        if data is None:
            open_streams -= 1
        else:
            yield language_pb2.RunPluginResponse(**{field: data})


class LanguageHost(language_pb2_grpc.LanguageRuntimeServicer):
    def __init__(self, engine_address: str | None, flags: dict):
        self.engine_address = engine_address
        self.flags = flags
        self.root_directory = flags.get("root") or None
        self.program_directory = None
        self.tracing = flags.get("tracing") or None
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    # ---- helpers -----------------------------------------------------------------------------
    def _options(self, info) -> tuple[dict, str]:
        """(runtime options, root dir) for a ProgramInfo (options from the engine, else the flags
        the engine may have started us with, else Pulumi.yaml)."""
        root = ""
        opts: dict = {}
        if info is not None:
            root = info.root_directory or ""
            if info.HasField("options"):
                opts = json_format.MessageToDict(info.options)
        root = root or self.root_directory or os.getcwd()
        if not opts:
            opts = {
                k: v
                for k, v in self.flags.items()
                if k in ("virtualenv", "toolchain", "typechecker")
            }
        if not opts:
            opts = read_project_runtime_options(root)
        return opts, root

    def _python(
        self, info, env: dict, default_venv: str | None = None
    ) -> tuple[list[str], str | None]:
        """The python command for the program, after updating `env` for its virtualenv.
        Returns (command, error message). `default_venv`: used when the options name none."""
        opts, root = self._options(info)
        venv = opts.get("virtualenv") or (
            default_venv if str(opts.get("toolchain") or "pip") == "pip" else None
        )
        toolchain = str(opts.get("toolchain") or "pip")
        if not venv and toolchain == "uv":
            venv = ".venv"
        if toolchain == "poetry" and not venv:
            return (
                [],
                "the 'poetry' toolchain is not supported by appstack's language host; "
                "set runtime.options.virtualenv",
            )
        if venv:
            venv = os.path.normpath(os.path.join(root, os.path.expanduser(str(venv))))
            py = os.path.join(venv, "bin", "python")
            if not os.path.isfile(py):
                what = "is not a virtual environment" if os.path.isdir(venv) else "does not exist"
                return [], (
                    f"The 'virtualenv' option in Pulumi.yaml is set to \"{venv}\", but it {what}. "
                    f"Create it (python3 -m venv {venv}) and install the requirements into it "
                    f"(make venv in this repo)."
                )
            env["VIRTUAL_ENV"] = venv
            env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
            env.pop("PYTHONHOME", None)
            env["PULUMI_RUNTIME_VIRTUALENV"] = venv
            return [py], None
        cmd = env.get("PULUMI_PYTHON_CMD") or shutil.which("python3") or shutil.which("python")
        if not cmd:
            return [], "no python3 on PATH and no runtime.options.virtualenv in Pulumi.yaml"
        return [cmd], None

    def _spawn(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, **kw)
        with self._lock:
            self._children.add(p)
        return p

    def _reap(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._children.discard(p)

    def terminate_children(self, grace: float = 5.0) -> None:
        with self._lock:
            children = list(self._children)
        for p in children:
            if p.poll() is None:
                # SIGTERM, not SIGINT: Python dies quietly instead of printing a
                # KeyboardInterrupt traceback into the engine's output.
                with contextlib.suppress(OSError):
                    p.terminate()
        for p in children:
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()

    # ---- RPCs ----------------------------------------------------------------------------------
    def Handshake(self, request, context):
        if request.engine_address:
            self.engine_address = request.engine_address
        if request.HasField("root_directory"):
            self.root_directory = request.root_directory
        if request.HasField("program_directory"):
            self.program_directory = request.program_directory
        log(f"Handshake engine={self.engine_address} root={self.root_directory}")
        return language_pb2.LanguageHandshakeResponse()

    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=VERSION)

    def RunPlugin(self, request, context):
        """Run a plugin written in Python (a policy pack: the engine's analyzer) from its directory.

        As the official host does: ``<venv python> <plugin dir> ARGS`` in ``pwd`` with the
        engine's environment (``env``), the venv from the plugin's runtime options (relative to
        the plugin's directory; ``venv`` when none is given). The plugin's stdout and stderr are
        streamed back as they come (its first stdout line is the port the engine dials), then its
        exit code when it is not 0. When the engine drops the stream (it kills the plugin), the
        process is terminated.
        """
        info = request.info if request.HasField("info") else None
        env = parse_env(request.env) if request.env else dict(os.environ)
        env.pop("APPSTACK_LANGHOST_ARGV0", None)
        python, err = self._python(info, env, default_venv="venv")
        if err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, err)
        program_dir = (info.program_directory if info is not None else "") or request.pwd
        env["PYTHONUNBUFFERED"] = "1"  # the port line must reach the engine at once
        cmd = [*python, "-u", program_dir, *request.args]
        log(f"RunPlugin ({request.kind}): {cmd!r} (cwd {request.pwd or program_dir})")
        try:
            p = self._spawn(
                cmd,
                env=env,
                cwd=request.pwd or program_dir or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"could not start {cmd[0]}: {e}")
        context.add_callback(lambda: _stop(p))
        try:
            yield from _stream_output(p)
            rc = p.wait()
        finally:
            self._reap(p)
        log(f"RunPlugin: exit code {rc}")
        if rc != 0:
            # A signal (negative rc) is reported like a shell does, as 128 + N.
            yield language_pb2.RunPluginResponse(exitcode=rc if rc > 0 else 128 - rc)

    def GetRequiredPlugins(self, request, context):
        # No provider plugins: the Docker platform is made of dynamic providers, which the engine
        # serves with the bundled pulumi-resource-pulumi-python.
        return language_pb2.GetRequiredPluginsResponse()

    def GetRequiredPackages(self, request, context):
        return language_pb2.GetRequiredPackagesResponse()

    def GetProgramDependencies(self, request, context):
        return language_pb2.GetProgramDependenciesResponse()

    def RuntimeOptionsPrompts(self, request, context):
        return language_pb2.RuntimeOptionsResponse()

    def About(self, request, context):
        env = dict(os.environ)
        cmd, err = self._python(request.info if request.HasField("info") else None, env)
        if err or not cmd:
            return language_pb2.AboutResponse(metadata={"note": err or ""})
        try:
            out = subprocess.run(
                [*cmd, "-c", "import sys; print(sys.version.split()[0])"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        return language_pb2.AboutResponse(
            executable=cmd[0], version=out, metadata={"languageHost": "appstack tools/langhost"}
        )

    def InstallDependencies(self, request, context):
        msg = (
            "pulumi-language-python (appstack): dependencies are not installed by the "
            "language host; "
            "the project's virtualenv is made by `make venv`.\n"
        )
        yield language_pb2.InstallDependenciesResponse(stdout=msg.encode())

    def Cancel(self, request, context):
        log("Cancel")
        self.cancelled.set()
        threading.Thread(target=self.terminate_children, daemon=True).start()
        return empty_pb2.Empty()

    def Run(self, request, context):
        info = request.info if request.HasField("info") else None
        exec_path = find_exec()
        if not exec_path:
            return language_pb2.RunResponse(
                error=f"{EXEC_NAME} not found (next to pulumi-language-python or on PATH); "
                "run tools/toolchain.sh ensure"
            )
        env = dict(os.environ)
        env.pop("APPSTACK_LANGHOST_ARGV0", None)
        python, err = self._python(info, env)
        if err:
            return language_pb2.RunResponse(error=err)

        program_dir = (
            info.program_directory if info is not None and info.program_directory else ""
        ) or request.pwd
        if info is not None and info.entry_point:
            program = os.path.normpath(os.path.join(program_dir, info.entry_point))
        else:
            program = request.program or "."
            if program_dir and not os.path.isabs(program):
                program = os.path.normpath(os.path.join(program_dir, program))
        root = (
            (info.root_directory if info is not None and info.root_directory else "")
            or self.root_directory
            or ""
        )

        args: list[str] = []

        def opt(name: str, value) -> None:
            if value not in (None, ""):
                args.extend(["--" + name, str(value)])

        opt("monitor", request.monitor_address)
        opt("engine", self.engine_address)
        opt("project", request.project)
        opt("stack", request.stack)
        opt("pwd", request.pwd)
        opt("dry_run", "true" if request.dryRun else "false")
        opt("parallel", request.parallel)  # the exec script requires it (int())
        opt("tracing", self.tracing)
        opt("organization", request.organization)
        opt("root_directory", root)
        args.append(program)
        args.extend(request.args)

        env["PULUMI_CONFIG"] = json.dumps(dict(request.config))
        env["PULUMI_CONFIG_SECRET_KEYS"] = json.dumps(list(request.configSecretKeys))
        env["PYTHONUNBUFFERED"] = "1"
        if request.project:
            env["PULUMI_PROJECT"] = request.project
        if request.stack:
            env["PULUMI_STACK"] = request.stack

        cmd = [*python, "-u", exec_path, *args]
        log(f"Run: {cmd!r} (cwd {request.pwd or program_dir or os.getcwd()})")
        # The program writes to our stdout/stderr, which the engine shows to the user.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            p = self._spawn(
                cmd, env=env, cwd=request.pwd or program_dir or None, stdin=subprocess.DEVNULL
            )
        except OSError as e:
            return language_pb2.RunResponse(error=f"could not start {cmd[0]}: {e}")
        try:
            rc = p.wait()
        finally:
            self._reap(p)
        log(f"Run: exit code {rc}")
        if rc == 0:
            return language_pb2.RunResponse()
        if rc == BAIL_EXIT_CODE:
            return language_pb2.RunResponse(bail=True)
        if rc < 0:
            return language_pb2.RunResponse(error=f"Program exited due to signal {-rc}")
        return language_pb2.RunResponse(error=f"Program exited with non-zero exit code: {rc}")


def main(argv: list[str]) -> int:
    global _verbose
    parsed = parse_args(argv)
    flags = parsed["flags"]
    try:
        _verbose = int(flags.get("v", "0"))
    except ValueError:
        _verbose = 0
    positional = parsed["positional"]
    engine_address = positional[-1] if positional else None

    host = LanguageHost(engine_address, flags)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(host, server)
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        print(
            "pulumi-language-python[appstack]: could not bind a port on 127.0.0.1", file=sys.stderr
        )
        return 1
    server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    log(f"serving on 127.0.0.1:{port}, engine {engine_address}, flags {flags}")

    stopping = threading.Event()

    def on_signal(signum, frame):
        if stopping.is_set():
            return
        stopping.set()
        log(f"signal {signum}: stopping")

        def stop():
            host.terminate_children()
            server.stop(grace=1)

        threading.Thread(target=stop, daemon=True).start()

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
