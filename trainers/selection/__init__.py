"""SALAD's Stage II: the offline text pool, active selection of the synthetic speech to train on (M per cluster,
sampling weighted by M^gamma) and `salad-select`."""
