"""``python -m e2e.mock_vllm``: run one mock vLLM server until SIGTERM/SIGINT."""

import sys

from .cli import main

sys.exit(main())
