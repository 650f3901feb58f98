"""The predictor: a language-model backbone with heads for pre-call output length and tool type,
and per-tool call-duration statistics learned online (DESIGN.md section 8)."""
