"""The programs the polyglot tools run in the child process (``polyglot.py``): each reads one
JSON request on stdin, runs the code over ``data``, ``state`` and ``input``, and answers with a
marker line followed by the result as JSON. Kept apart because they are code in other languages
(and Python run with ``-I``), not part of this package's runtime."""

# The child: read the request, build ``data`` (DataFrames when pandas is installed), run the code
# in one namespace, answer with the marker line and the result. Only frames of the user's code
# (and the deepest library frame) are kept in a traceback.
PYTHON_HARNESS = r'''
import builtins, json, linecache, math, sys, traceback

SOURCE = "<python_data>"
request = json.loads(sys.stdin.read())
real_stdout = sys.stdout

try:
    import pandas as pd
except ImportError:
    pd = None
try:
    import numpy as np
except ImportError:
    np = None


def jsonable(value, depth=0):
    if depth > 64:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return jsonable(value.to_dict("records"), depth + 1)
        if isinstance(value, pd.Series):
            return jsonable(value.tolist(), depth + 1)
        if value is pd.NaT:
            return None
    if np is not None and isinstance(value, np.ndarray):
        return jsonable(value.tolist(), depth + 1)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "item"):
        try:
            return jsonable(value.item(), depth + 1)
        except Exception:
            pass
    try:
        number = float(value)
    except Exception:
        return str(value)
    return number if math.isfinite(number) else None


class Data:
    """``data.<phase>`` / ``data["phase"]``: a DataFrame of a phase's rows, else its value."""

    def __init__(self, outputs):
        self._outputs = outputs
        self._cache = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name)

    def __getitem__(self, name):
        return self._get(name)

    def __contains__(self, name):
        return name in self._outputs

    def __dir__(self):
        return list(self._outputs)

    def list_available(self):
        return list(self._outputs)

    def _frame(self, rows, columns=None):
        if pd is None:
            return rows
        frame = pd.DataFrame(rows)
        if not rows and columns:
            frame = pd.DataFrame(columns=columns)
        return frame

    def _get(self, name):
        if name in self._cache:
            return self._cache[name]
        if name not in self._outputs:
            raise AttributeError(f"No data found for phase '{name}' (available: {list(self._outputs)})")
        output = self._outputs[name]
        value = output
        if isinstance(output, dict):
            if isinstance(output.get("rows"), list):
                value = self._frame(output["rows"], output.get("columns"))
            elif "result" in output:
                result = output["result"]
                if isinstance(result, list) and result and isinstance(result[0], dict):
                    value = self._frame(result)
                else:
                    value = result
            elif isinstance(output.get("results"), list):
                value = self._frame(output["results"])
        elif isinstance(output, list) and output and isinstance(output[0], dict):
            value = self._frame(output)
        self._cache[name] = value
        return value


def answer(payload):
    text = json.dumps(payload, allow_nan=False)
    if len(text) > request["max_bytes"]:
        text = json.dumps({"error": (
            f"the result is {len(text) // 2**20} MiB as JSON, more than the "
            f"{request['max_bytes'] // 2**20} MiB allowed: filter or aggregate it first")})
    sys.stdout = real_stdout
    real_stdout.flush()
    real_stdout.write("\n" + request["mark"] + "\n" + text)
    real_stdout.flush()


def user_traceback(error):
    report = traceback.TracebackException(type(error), error, error.__traceback__)
    frames = [frame for frame in report.stack if frame.filename != __file__]
    kept = [frame for frame in frames if frame.filename == SOURCE]
    if frames and frames[-1].filename != SOURCE:
        kept.append(frames[-1])
    report.stack = traceback.StackSummary.from_list(kept)
    return "".join(report.format(chain=False))


def shape(result):
    if pd is not None and isinstance(result, pd.DataFrame):
        frame = result.copy()
        frame.columns = [str(c) for c in frame.columns]
        rows = jsonable(frame.to_dict("records"))
        return {"rows": rows, "columns": list(frame.columns), "row_count": len(frame), "type": "dataframe"}
    module = type(result).__module__ or ""
    if module.startswith("plotly") and hasattr(result, "to_plotly_json"):
        figure = json.loads(result.to_json())
        return {"type": "plotly", "content": "Generated Plotly chart", "data": figure.get("data", []),
                "layout": figure.get("layout", {})}
    if (module.startswith("matplotlib") and type(result).__name__ == "Figure") or module.startswith("PIL"):
        return {"error": "result is an image (matplotlib or PIL); python_data here returns data and "
                "Plotly figures only: return the numbers (or a Plotly figure) instead"}
    kind = "dict" if isinstance(result, dict) else "list" if isinstance(result, (list, tuple)) else "scalar"
    return {"result": jsonable(result), "type": kind}


code = request["code"]
linecache.cache[SOURCE] = (len(code), None, code.splitlines(True), SOURCE)
namespace = {
    "__name__": "__main__",
    "__builtins__": builtins,
    "data": Data(request["data"]),
    "state": request["state"],
    "input": request["input"],
    "pd": pd,
    "np": np,
    "json": json,
}
try:
    exec(compile(code, SOURCE, "exec"), namespace)
except BaseException as error:
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    answer({"error": message, "traceback": user_traceback(error)})
else:
    if "result" not in namespace:
        answer({"error": "Code must set a 'result' variable. Example: result = df"})
    else:
        try:
            answer(shape(namespace["result"]))
        except BaseException as error:
            answer({"error": f"the result cannot be returned: {type(error).__name__}: {error}"})
'''


# The child: globals ``data``, ``state``, ``input`` (and ``require``); the code runs as a script
# named <js_data>, so ``result = ...`` and ``let result = ...`` both work; a Promise is awaited.
JS_HARNESS = r"""
"use strict";
const fs = require("fs");
const vm = require("vm");
const SOURCE = "<js_data>";
const request = JSON.parse(fs.readFileSync(0, "utf8"));

function answer(payload) {
  let text;
  try {
    text = JSON.stringify(payload);
  } catch (error) {
    text = JSON.stringify({ error: "the result cannot be turned into JSON: " + error.message });
  }
  if (text.length > request.max_bytes) {
    text = JSON.stringify({ error: "the result is more than " + Math.floor(request.max_bytes / 1048576) +
      " MiB as JSON: filter or aggregate it first" });
  }
  fs.writeSync(1, "\n" + request.mark + "\n" + text);
  process.exit(0);
}

function failure(error) {
  if (!(error instanceof Error)) return { error: "uncaught: " + String(error) };
  const lines = String(error.stack || error).split("\n");
  const kept = lines.filter((line) => !/^\s+at /.test(line) || line.includes(SOURCE));
  return { error: error.name + ": " + error.message, traceback: kept.join("\n") };
}

globalThis.data = request.data;
globalThis.state = request.state;
globalThis.input = request.input;
globalThis.require = require;
let value;
try {
  value = vm.runInThisContext(
    request.code + "\n;(typeof result === 'undefined' ? undefined : result)", { filename: SOURCE });
} catch (error) {
  answer(failure(error));
}
Promise.resolve(value).then(
  (result) => answer(result === undefined ? { error: "Code must set a 'result' variable" } : { result }),
  (error) => answer(failure(error)));
"""


# The child (Babashka): ``data`` (phase names with ``-`` for ``_``, keyword keys), ``state``,
# ``input``; the value of the code's last expression is the result.
CLOJURE_HARNESS = r"""
(require '[cheshire.core :as json])

(def request (json/parse-string (slurp *in*) true))
(def data (:data request))
(def state (:state request))
(def input (:input request))

(defn- answer [payload]
  (let [text (try (json/generate-string payload)
                  (catch Throwable e
                    (json/generate-string
                      {:error (str "the result cannot be turned into JSON: " (ex-message e))})))
        text (if (> (count text) (:max_bytes request))
               (json/generate-string {:error "the result is too large: filter or aggregate it first"})
               text)]
    (flush)
    (print (str "\n" (:mark request) "\n" text))
    (flush)))

(try
  (let [value (load-string (:code request))
        value (if (seq? value) (doall value) value)]
    (answer {:result value}))
  (catch Throwable e
    (let [where (select-keys (ex-data e) [:line :column])]
      (answer {:error (str (.getSimpleName (class e)) ": " (or (ex-message e) (str e))
                           (when (seq where)
                             (str " (line " (:line where) ", column " (:column where) ")")))}))))
"""
