"""Load the model saved by ../MLFLOW_save/SAVE_MLflow.py and use it, without that folder's code.

    python LOAD_MLflow.py [--run-id RUN_ID] [--tracking-uri DIR_OR_URI] [--experiment NAME]
                          [--text "Some English text"] [--image PATH_OR_URL]

Without --run-id, the latest run of the experiment is loaded. The examples logged with the run are
replayed, then any --text (sentiment and translation) and --image given here.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a saved model holds all its files: no hub needed
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DEFAULT_STORE = Path(__file__).resolve().parent.parent / "cloudflow_store"


def say(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def latest_run_id(experiment_id):
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        sys.exit("error: this experiment has no run yet: run ../MLFLOW_save/SAVE_MLflow.py first.")
    return runs[0].info.run_id


def logged_examples(run_id):
    """The example inputs SAVE_MLflow.py logged with the run; image files are made local paths."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="examples"))
    except MlflowException:  # a run saved without examples
        return {}
    examples = json.loads((folder / "examples.json").read_text())
    for params in examples.values():
        if params["input_type"] == "image" and (folder / params["data"]).is_file():
            params["data"] = str(folder / params["data"])
    return examples


def show(name, params, result):
    """One readable line per answer."""
    data = params.get("data")
    if params["input_type"] == "summarization":
        print(f"- {name}: {result['summary_text']}")
        return
    inputs = data if isinstance(data, list) else [data]
    answers = result if params["input_type"] != "image" else [result]
    for one_input, answer in zip(inputs, answers, strict=False):
        shown = os.path.basename(one_input) if params["input_type"] == "image" else one_input
        if isinstance(answer, list):  # image: the top labels, best first
            answer = ", ".join(f"{a['label']} ({a['score']:.2f})" for a in answer)
        elif "translation_text" in answer:
            answer = answer["translation_text"] + (
                f"   [memory: {answer['matched_phrase']!r}, similarity {answer['score']:.2f}]"
                if "matched_phrase" in answer
                else ""
            )
        else:
            answer = f"{answer['label']} ({answer['score']:.2f})"
        print(f"- {name}: {shown!s} -> {answer}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-id", help="default: the latest run of the experiment")
    parser.add_argument(
        "--tracking-uri",
        default=str(DEFAULT_STORE),
        help="store folder (or MLflow tracking URI); default: %(default)s",
    )
    parser.add_argument("--experiment", default="cloudflow_demo", help="default: %(default)s")
    parser.add_argument("--text", action="append", default=[], help="English text to analyse")
    parser.add_argument("--image", action="append", default=[], help="image path or URL")
    parser.add_argument("--json-out", help="also write the predictions to this JSON file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if "://" not in args.tracking_uri and not Path(args.tracking_uri).is_dir():
        sys.exit(
            f"error: no store at {args.tracking_uri}: run ../MLFLOW_save/SAVE_MLflow.py first."
        )

    start = time.perf_counter()
    import cloudflow

    experiment_id = cloudflow.prepare_env(args.tracking_uri, args.experiment)
    run_id = args.run_id or latest_run_id(experiment_id)
    say(f"Opened the store {args.tracking_uri} in {time.perf_counter() - start:.1f} s")

    say(f"Loading run {run_id} of experiment {args.experiment!r} ...")
    start = time.perf_counter()
    loaded_model = cloudflow.cloudflow_model()
    loaded_model.load_model(
        tracking_uri=args.tracking_uri, experiment_id=args.experiment, run_id=run_id
    )
    say(f"Loaded in {time.perf_counter() - start:.1f} s")

    requests = logged_examples(run_id)
    for i, text in enumerate(args.text, 1):
        requests[f"sentiment (--text {i})"] = {"input_type": "sentiment", "data": [text]}
        requests[f"translation (--text {i})"] = {"input_type": "translation", "data": [text]}
    for i, image in enumerate(args.image, 1):
        requests[f"image (--image {i})"] = {"input_type": "image", "data": image}

    predictions = {}
    for name, params in requests.items():
        start = time.perf_counter()
        predictions[name] = loaded_model.predict(**params)
        show(name, params, predictions[name])
        say(f"  {name}: answered in {time.perf_counter() - start:.2f} s")

    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"run_id": run_id, "predictions": predictions}, indent=2)
        )


if __name__ == "__main__":
    main()
