"""Blind side-by-side labelling by people: `alignkit sxs serve` (the web page) and `alignkit sxs export`
(win rates and DPO pairs from the labels). See docs/sxs.md."""
