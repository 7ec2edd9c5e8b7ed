"""Hub tooling: converters of the small offline assets, checkpoint building, salad-push, model card, salad-verify."""
