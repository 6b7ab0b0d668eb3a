"""The paper's CLIP evaluation suite (Tables 3 and 6): ImageNet-1K zero-shot, COCO / Flickr30K
Karpathy-test retrieval, Urban-1K long-caption retrieval and VG-Attribution, each read from its
public release layout in a local folder; `run.py` evaluates them and `report.py` writes the
JSON and the Markdown table."""
