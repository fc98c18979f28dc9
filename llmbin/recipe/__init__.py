"""Recipes: what to run (a versioned, validated description) and running one on a model."""
from .recipe import RECIPE_VERSION, SHIPPED_DIR, Recipe, set_field

__all__ = ["RECIPE_VERSION", "SHIPPED_DIR", "Recipe", "set_field"]
