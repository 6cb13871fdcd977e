"""The web console served at `/console` (docs/console.md): static pages shipped in this
package, and a few read endpoints and the live tail under `/console/api/`. Every change the
page makes goes through the admin API itself, with its checks (rabbitmesh/api/auth.py)."""
