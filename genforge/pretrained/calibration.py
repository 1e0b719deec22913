"""Calibration text for int8 quantization (`quantize.calibrate`): a few paragraphs of the
kinds of input a general language model sees (prose, dialogue, instructions, code, numbers,
lists), so the per-channel activation maxima SmoothQuant needs are not those of one domain.
Written for genforge; any representative text of the user's own works as well."""
from __future__ import annotations

CALIBRATION_TEXT = """\
The river had been rising for three days before anyone in the village thought to move the \
boats. By the fourth morning the water reached the steps of the mill, and the miller's \
daughter, who kept the accounts, wrote in the ledger that work would stop until it fell.

"Are you sure the bridge will hold?" asked the traveller.
"It has held for ninety years," said the ferryman, "though I would not cross it with a cart."

User: Can you explain what a neural network is, in two sentences?
Assistant: A neural network is a function built from many simple units, each computing a \
weighted sum of its inputs followed by a non-linearity. Its weights are adjusted by gradient \
descent so that its outputs match examples it is trained on.

def moving_average(values, window=3):
    \"\"\"Mean of each run of `window` consecutive values.\"\"\"
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]

SELECT name, COUNT(*) AS orders FROM customers JOIN orders USING (customer_id)
WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY orders DESC LIMIT 10;

Shopping list: 2 kg of flour, 12 eggs, 500 ml of milk, 3 lemons, a jar of honey (about 340 g).
The meeting moved from 14:30 to 16:00 on Tuesday, 3 March; room B-217, second floor.
In 1969 the Apollo 11 mission landed on the Moon; the return trip took about 8 days, 3 hours.
E = mc^2, where c is roughly 299,792,458 metres per second; 1 + 1 = 2; 7 x 8 = 56; 2^10 = 1024.

Photosynthesis converts light energy into chemical energy: plants take in carbon dioxide and \
water and, using sunlight, produce glucose and release oxygen. Most of it happens in the \
chloroplasts of leaf cells.

Bonjour, comment allez-vous ? Très bien, merci. ¿Dónde está la estación? Gracias. 東京は日本の首都です。
Les données sont prêtes ; nous pouvons commencer l'entraînement du modèle demain matin.

1. Preheat the oven to 200 °C.
2. Mix the dry ingredients, then add the eggs one at a time.
3. Bake for 25-30 minutes, until a skewer comes out clean.

Dear team, thank you for your patience while we fixed the login problem. Everything should \
work again; if it does not, reply to this message with the time and the error you saw.
"""

__all__ = ["CALIBRATION_TEXT"]
