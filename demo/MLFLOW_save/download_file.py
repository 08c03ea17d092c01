"""Where the demo's inputs come from: an image (path or URL) and a story to summarise."""

import get_print
import utils

SAMPLE_STORY = (
    "The old lighthouse keeper had lived alone on the rock for thirty years. "
    "Every evening he climbed the hundred steps to light the great lamp. "
    "One winter night a storm broke the lamp's glass and the light went out. "
    "Out at sea, a fishing boat was heading straight for the rocks in the dark. "
    "The keeper lit every candle and lantern he owned and set them in the tower windows. "
    "The small flickering glow was just enough for the crew to see the danger and turn away. "
    "The next morning the fishermen rowed to the rock to thank him. "
    "They brought bread, coffee and a new pane of glass for the lamp. "
    "From then on, the village sent someone to visit the keeper every Sunday. "
    "He was never quite alone again."
)


def download_image(source):
    """The image at ``source``, a URL or a local file path, as a PIL image."""
    return utils.get_image(source)


def download_story(source=None):
    """A story to summarise: the text at ``source`` (URL or path), or a built-in one."""
    if source is None:
        get_print.get_print("Using the built-in sample story")
        return SAMPLE_STORY
    return utils.get_text(source)
