"""Pre-processing shared by training (train_models.py) and prediction (SAVE_MLflow.py)."""

import io
import re

import intermediate_module
import numpy as np

DIGIT_SIZE = 8  # scikit-learn's digits are 8x8 images with pixel values 0..16


def embed(text_encoder, texts):
    """Sentence embeddings, one row per text: mean of the token vectors, L2-normalised.

    This is the pooling all-MiniLM-L6-v2 was trained with, so cosine similarity between two rows
    is the model's notion of how close two sentences are in meaning.
    """
    rows = []
    for text in texts:
        tokens = np.asarray(text_encoder(text)[0], dtype=np.float32)  # (n_tokens, 384)
        vector = tokens.mean(axis=0)
        rows.append(vector / np.linalg.norm(vector))
    return np.stack(rows)


def split_sentences(text):
    """Split a text into sentences on ., ! and ? followed by a space."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def get_text(source):
    """The text at ``source``, a URL or a local path, decoded as UTF-8."""
    return intermediate_module.read_bytes(source).decode("utf-8")


def get_image(source):
    """Open the image at ``source`` (a URL or a local path) as a PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(intermediate_module.read_bytes(source)))


def digit_pixels(image):
    """Turn any image of a single digit into the 64 features the digits model expects.

    The training images are light strokes on a dark background; a photo or a drawing is usually
    dark ink on white paper, so such an image is inverted first.
    """
    gray = np.asarray(image.convert("L").resize((DIGIT_SIZE, DIGIT_SIZE)), dtype=np.float32)
    if gray.mean() > 127:
        gray = 255.0 - gray
    return (gray / 255.0 * 16.0).reshape(1, -1)


def ranked(labels, probabilities, top_k=1):
    """The ``top_k`` most likely labels as ``[{"label": ..., "score": ...}]``, best first."""
    order = np.argsort(probabilities)[::-1][:top_k]
    return [{"label": str(labels[i]), "score": round(float(probabilities[i]), 4)} for i in order]


def classify_sentiment(text_encoder, sentiment_model, texts):
    probabilities = sentiment_model.predict_proba(embed(text_encoder, texts))
    return [ranked(sentiment_model.classes_, p)[0] for p in probabilities]


def translate(text_encoder, translation_model, texts):
    """French for each English text, from the closest phrase of the translation memory."""
    similarities = embed(text_encoder, texts) @ translation_model["embeddings"].T
    results = []
    for row in similarities:
        best = int(row.argmax())
        results.append(
            {
                "translation_text": translation_model["french"][best],
                "matched_phrase": translation_model["english"][best],
                "score": round(float(row[best]), 4),
            }
        )
    return results


def summarize(text_encoder, text, min_length=0, max_length=50):
    """Extractive summary: the sentences closest to the text's overall meaning, in text order.

    Sentences are taken best first while the summary stays within ``max_length`` words, and until
    it has at least ``min_length`` words.
    """
    sentences = split_sentences(text)
    vectors = embed(text_encoder, sentences)
    centre = vectors.mean(axis=0)
    chosen, words = [], 0
    for i in np.argsort(vectors @ centre)[::-1]:
        n_words = len(sentences[i].split())
        if chosen and words + n_words > max_length and words >= min_length:
            break
        chosen.append(int(i))
        words += n_words
    return " ".join(sentences[i] for i in sorted(chosen))


def classify_digit(image_classification, image, top_k=3):
    import torch

    pixels = torch.tensor(digit_pixels(image) / 16.0, dtype=torch.float32)
    with torch.no_grad():
        probabilities = torch.softmax(image_classification(pixels), dim=1)[0].numpy()
    return ranked([str(d) for d in range(10)], probabilities, top_k)


def classify_rows(tabular_model, rows, top_k=1):
    """Predict each row, a dict of measurements named like the training columns."""
    import pandas as pd

    frame = pd.DataFrame(rows)[list(tabular_model.feature_names_in_)]
    return [ranked(tabular_model.classes_, p, top_k)[0] for p in tabular_model.predict_proba(frame)]
