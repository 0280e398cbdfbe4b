"""The ``flexispeech serve`` web app: live streaming transcription in the browser."""
