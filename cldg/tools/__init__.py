"""Commands that read artifacts but make none (compare, human-eval, inspect-samples): not stages."""
