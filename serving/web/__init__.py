"""The model in the page: a static site that chats with an exported model in the visitor's
browser (llama.cpp as WebAssembly), built by `python -m serving.web`. See serving/web/build.py."""
