"""Save a predict function that spans several modules, with the models it uses, in an MLflow run.

The classic Cloudflow walkthrough. Offline by default: the models are built here in seconds (see
train_models.py). With --hub, the classic four Hugging Face hub pipelines are downloaded instead.

    python SAVE_MLflow.py [--tracking-uri DIR_OR_URI] [--experiment NAME] [--hub]

Then load the run somewhere else, without this folder: see ../MLFLOW_load/LOAD_MLflow.py.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import download_file
import utils
from get_print import get_print, timed

DEFAULT_STORE = Path(__file__).resolve().parent.parent / "cloudflow_store"


def _shorten(text: str, width: int = 110) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis saying it was cut."""
    return text if len(text) <= width else text[: width - 4] + " ..."


def predict_to_save(
    text_encoder,
    sentiment_model,
    translation_model,
    image_classification,
    tabular_model,
    input_type,
    data=None,
    min_length=0,
    max_length=50,
):
    """The one function saved: ``input_type`` picks the model, ``data`` is its input.

    cloudflow passes the models by name (the keys of the ``models`` dict given to ``save``); the
    caller passes the rest, e.g. ``predict(input_type="image", data="digit.png")``.
    """
    texts = [data] if isinstance(data, str) else data
    if input_type == "sentiment":
        return utils.classify_sentiment(text_encoder, sentiment_model, texts)
    elif input_type == "translation":
        return utils.translate(text_encoder, translation_model, texts)
    elif input_type == "image":
        image = download_file.download_image(data)  # a local path or a URL
        return utils.classify_digit(image_classification, image)
    elif input_type == "summarization":
        if data is None:
            data = download_file.download_story()
        summary = utils.summarize(text_encoder, data, min_length, max_length)
        return {"summary_text": summary, "input_text": data}
    elif input_type == "tabular":
        return utils.classify_rows(tabular_model, [data] if isinstance(data, dict) else data)
    raise ValueError(
        f"Unknown input_type {input_type!r}: use sentiment, translation, image, summarization "
        "or tabular."
    )


def predict_to_save_hub(
    sentiment_model,
    summarization_model,
    translation_model,
    image_classification,
    input_type,
    data=None,
    min_length=0,
    max_length=150,
):
    """The classic walkthrough's function, for the four hub pipelines (--hub)."""
    if input_type == "sentiment":
        return sentiment_model(data)
    elif input_type == "translation":
        return translation_model(data)
    elif input_type == "image":
        return image_classification(download_file.download_image(data))
    elif input_type == "summarization":
        if data is None:
            data = download_file.download_story()
        result = summarization_model(data, min_length=min_length, max_length=max_length)[0]
        result["input_text"] = data
        return result
    raise ValueError(
        f"Unknown input_type {input_type!r}: use sentiment, translation, image or summarization."
    )


# Inputs to try the function on; they are logged with the run, so LOAD_MLflow.py can replay them.
EXAMPLES = {
    "sentiment": {
        "input_type": "sentiment",
        "data": [
            "The waiter was charming and the dessert was superb.",
            "My order never arrived and nobody answered the phone.",
        ],
    },
    "translation": {
        "input_type": "translation",
        "data": ["Where is the station?", "I'd like a cup of coffee."],
    },
    "summarization": {"input_type": "summarization", "min_length": 10, "max_length": 40},
    "image": {"input_type": "image", "data": "digit.png"},  # a file logged next to the examples
    "tabular": {
        "input_type": "tabular",
        "data": {
            "sepal length (cm)": 6.4,
            "sepal width (cm)": 3.1,
            "petal length (cm)": 5.5,
            "petal width (cm)": 1.8,
        },
    },
}
HUB_IMAGE = (
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/coco_sample.png"
)


def check_hub_reachable(timeout=10):
    """Exit with one line, rather than a long retry loop, when the hub cannot be reached."""
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
    except OSError as error:
        sys.exit(
            f"error: --hub needs the Hugging Face hub, and {constants.ENDPOINT} cannot be reached "
            f"({getattr(error, 'reason', error)}). Check the network, or run without --hub to "
            "use the offline models."
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tracking-uri",
        default=str(DEFAULT_STORE),
        help="store folder (or MLflow tracking URI); default: %(default)s",
    )
    parser.add_argument("--experiment", default="cloudflow_demo", help="default: %(default)s")
    parser.add_argument(
        "--hub", action="store_true", help="use the classic hub pipelines (needs a network)"
    )
    parser.add_argument("--json-out", help="also write the example predictions to this JSON file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.hub:
        check_hub_reachable()
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the offline models are all local

    with timed("Importing mlflow, cloudflow and the model libraries"):
        import mlflow
        import train_models

        import cloudflow

    examples_dir = Path(tempfile.mkdtemp(prefix="cloudflow_examples_"))
    if args.hub:
        try:
            models = train_models.build_hub_models()
        except OSError as error:
            sys.exit(f"error: could not download the hub pipelines: {str(error).splitlines()[0]}")
        predict_function, metrics = predict_to_save_hub, {}
        examples = {name: EXAMPLES[name] for name in ("sentiment", "translation", "summarization")}
        examples["image"] = {"input_type": "image", "data": HUB_IMAGE}
    else:
        models, metrics, (digit, label) = train_models.build_offline_models()
        get_print(f"Sample image: a {label} from the digits test split, unseen in training")
        train_models.save_digit_png(digit, examples_dir / "digit.png")
        predict_function, examples = predict_to_save, EXAMPLES
    for name, value in metrics.items():
        get_print(f"  {name} = {value:.3g}")

    # Try the function before saving it; relative image paths are files in examples_dir.
    predictions = {}
    with timed(f"Trying {predict_function.__name__} on {len(examples)} examples"):
        for name, params in examples.items():
            if name == "image" and (examples_dir / params["data"]).is_file():
                params = {**params, "data": str(examples_dir / params["data"])}
            predictions[name] = predict_function(**models, **params)
            get_print(f"  {name}: {_shorten(json.dumps(predictions[name], ensure_ascii=False))}")
    (examples_dir / "examples.json").write_text(json.dumps(examples, indent=2))

    tracking_uri = args.tracking_uri
    experiment_id = cloudflow.prepare_env(tracking_uri, args.experiment)

    with mlflow.start_run(experiment_id=experiment_id) as run:
        print("RUN ID : ", run.info.run_id, flush=True)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(examples_dir), artifact_path="examples")

        with timed(f"Saving {predict_function.__name__} and {len(models)} models"):
            model = cloudflow.cloudflow_model()
            model.save(
                tracking_uri=tracking_uri,
                experiment_id=experiment_id,
                run_id=run.info.run_id,
                predict_function=predict_function,
                models=models,
            )

    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"run_id": run.info.run_id, "predictions": predictions}, indent=2)
        )
    get_print(f"Saved in experiment {args.experiment!r} of {tracking_uri}")
    print(
        "Load it from the MLFLOW_load folder with:\n"
        f"  python LOAD_MLflow.py --tracking-uri {tracking_uri} --experiment {args.experiment} "
        f"--run-id {run.info.run_id}"
    )


if __name__ == "__main__":
    main()
