"""Custom checkov checks for infra/ (see ccr_checks.py); checkov loads only folders with this file."""
