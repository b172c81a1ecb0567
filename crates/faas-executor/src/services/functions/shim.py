# faas python runtime shim: imports the handler once, then serves invocations.
# Protocol (one JSON object per line): requests on the original stdin, answers on the original
# stdout. The function's own prints are captured per invocation; anything written to fd 1 or 2
# directly goes to stderr, which the host adds to the invocation's logs.
import contextlib, importlib, inspect, io, json, os, sys, time, traceback

proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
null = os.open("/dev/null", os.O_RDONLY)
os.dup2(null, 0)
os.dup2(2, 1)
sys.stdin = open(os.devnull)

def send(obj):
    proto_out.write(json.dumps(obj) + "\n")
    proto_out.flush()

def describe(e):
    tb = e.__traceback__
    # The shim's own frames (run with -c, so named "<string>") are not the function's.
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next
    return {"type": type(e).__name__, "message": str(e),
            "traceback": "".join(traceback.format_exception(type(e), e, tb))}

class Context:
    def __init__(self, req):
        self.invocation_id = req.get("id")
        self.function_name = os.environ.get("FAAS_FUNCTION_NAME")
        self.function_version = os.environ.get("FAAS_FUNCTION_VERSION")
        self._deadline = time.time() + req.get("timeout_ms", 0) / 1000.0
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.time()) * 1000))

sys.path.insert(0, "/var/task")
handler = None
try:
    module, name = os.environ["FAAS_HANDLER"].rsplit(".", 1)
    handler = getattr(importlib.import_module(module), name)
    try:
        takes_context = len(inspect.signature(handler).parameters) >= 2
    except (TypeError, ValueError):
        takes_context = True
    send({"ready": True})
except BaseException as e:
    send({"ready": False, "error": describe(e)})
    sys.exit(0)

for line in proto_in:
    req = json.loads(line)
    logs = io.StringIO()
    answer = {}
    with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
        try:
            args = (req["payload"], Context(req)) if takes_context else (req["payload"],)
            result = handler(*args)
            answer = {"ok": True, "result": json.loads(json.dumps(result))}
        except BaseException as e:
            answer = {"ok": False, "error": describe(e)}
    answer["logs"] = logs.getvalue()
    send(answer)
