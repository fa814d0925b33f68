"""The OpenAI-compatible server: `python -m runtime serve ENGINE_DIR` (runtime/serve.py).

scheduler.py  the engine thread every request shares (continuous batching, queue, deadlines)
api_request.py, image_urls.py  the request body to a prompt, image references and sampling, with limits;
              fetching images (public addresses only) and decoding them
admission.py  what a request passes before it costs much: the prompt's size, room for its decoded images
access.py     who may call: the API key, the Host and Origin checks, CORS
http.py       the HTTP endpoints; metrics.py the Prometheus text; api_error.py OpenAI-style error bodies
"""
