"""llama-cpp-python's OpenAI-compatible server on a port the system picks, for the tests.

Binds 127.0.0.1:0 itself, loads the model, prints `listening http://127.0.0.1:PORT` on
stdout and serves on that very socket (uvicorn takes it as is): no port is picked, dropped
and bound again, so two servers started at once cannot race for one. Runs until killed.

usage: python serve.py GGUF MODEL_NAME [N_CTX]
(the Python of the venv `scripts/setup --engine-server` makes: COCOON_ENGINE_SERVER_PYTHON)
"""

import socket
import sys

import uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ModelSettings, ServerSettings

gguf, name = sys.argv[1], sys.argv[2]
n_ctx = int(sys.argv[3]) if len(sys.argv) > 3 else 2048

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(64)
port = sock.getsockname()[1]
app = create_app(
    server_settings=ServerSettings(host="127.0.0.1", port=port),
    model_settings=[
        ModelSettings(model=gguf, model_alias=name, n_ctx=n_ctx, verbose=False)
    ],
)
print(f"listening http://127.0.0.1:{port}", flush=True)
server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
server.run(sockets=[sock])
