"""Event sources: what runs PingSources, ContainerSources, ApiServerSources and GitLabSources.

One module per kind (`ping`, `container`, `apiserver`, `gitlab`; `sinkbinding` holds the
environment a SinkBinding or ContainerSource gives a process), and the shared pieces:
`sender` (POST a CloudEvent with retries), `leader` (one active runner per source across
replicas, through RabbitMQ), `manager` (start, restart and stop each source's runtime as the
reconciler asks). The reconciler (rabbitmesh/reconciler/sources.py) turns resources into
`Plan`s; replicas whose role is `all` or `sources` run them. docs/sources.md tells the story.
"""
