"""A Gradio Space for SALAD checkpoints: `app.py` (the app, runs here and on the Hub), `folder.py` (the Space folder
that `salad-push --space_id` uploads) and `python -m hub_scripts.space` (the app, launched here)."""
