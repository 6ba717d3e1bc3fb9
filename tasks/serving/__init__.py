"""Using a trained checkpoint: `onegen ask`, `onegen link`, `onegen index add|info` and `onegen api`.

- `service`: the checkpoint and its LanceDB tables, loaded once; prompts built as training built them;
  one batch of questions (R→G) or texts to link (G→R) through the one-pass engine, streamed row by row.
- `batching`: dynamic batching of concurrent requests into that engine (a worker thread, a bounded
  queue, per-request deadlines and cancellation; a failing request fails alone).
- `app`: the HTTP API (FastAPI) and the web page at `/` (`webui/index.html`, no build step).
- `corpus`: a user's documents (JSONL or a folder of .txt/.md) into the index, resumable.
- `cli`: the options of the four subcommands (`add_commands`, which `flows/cli.py` registers);
  `commands`: the code that runs them (`run(args)`, which `flows/cli.py` dispatches to).
- `tiny`: a tiny checkpoint and index trained in seconds, for tests and the load bench.

Nothing here is a DVC stage; docs/SERVING.md describes the commands and the API.
"""
