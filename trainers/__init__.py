"""Cross-modal distillation trainer, data building and Stage II active selection (see the issues)."""
