"""The meeting pipeline (shared/seeds 001): upload, mandatory transcription, optional analysis steps that
degrade gracefully, storage, a signed completion webhook, progress over SSE."""
