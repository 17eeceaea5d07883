"""Recipes: setup -> train -> evaluate -> save, one class per job."""
