"""What a sweep becomes: selection rules, tables, figures, explanation metrics, mask exports."""
