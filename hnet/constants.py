"""Numbers with one meaning across the package."""

import math

BOS = 254  # begins every document and prompt, as the official generate.py does; an ordinary byte in the data
IGNORE_INDEX = -100  # a label that scores nothing (cross-entropy's ignore_index)
LN2 = math.log(2)  # nats per bit
