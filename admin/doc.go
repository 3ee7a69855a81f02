// Package admin is cachelun's operator interface: an HTTP+JSON API on a
// unix socket (optionally also on TCP with a bearer token), the client the
// CLI verbs use, and the Prometheus collectors served on /metrics.
//
// # What it guarantees
//
// Management never waits behind data-path work. Every read call (status,
// volumes, caches, sessions, /metrics) answers from a snapshot of the
// engine's state: a call triggers at most one fresh read of the backend at
// a time and waits for it at most Config.ReadBudget (50 ms by default);
// when the backend does not answer in time, the call answers from the
// previous snapshot with "stale": true, or, if there never was one, with
// 503 backend_busy. Explain runs under the same budget. Operations that may
// take long (flush, drain, mode switch, cache detach, reload) run as jobs:
// the call returns 202 with the job at once, the job's progress is polled
// with GET /v1/jobs/{id}, and DELETE /v1/jobs/{id} cancels it. Drains and
// mode switches of one volume exclude each other (409 conflict naming the
// running job); a flush may run beside them.
//
// Errors are JSON, always: {"error": {"code": "...", "message": "..."}}
// with a 4xx status for bad requests (bad_request, not_found,
// method_not_allowed, conflict, unauthorized) and 503
// backend_busy when the engine does not answer.
//
// POST /v1/stats/reset (cachelun stats reset) never touches the engine or
// /metrics, whose counters stay monotonic for Prometheus: the server keeps
// the counters at the reset and every later answer of the API and the
// status page subtracts them ("counters_since" in the answer says from
// when). Gauges (dirty bytes, lag, segments) are never adjusted.
//
// The sizing advisor's curves (VolumeAPI.Sizing, CacheAPI.Sizing) are read
// into the same snapshots; the API, the cachelun_advisor_* metrics and the
// status page's plots evaluate the snapshot's copy (advice.go).
//
// The admin package never mutates engine state except through the
// VolumeAPI, CacheAPI and Backend interfaces it defines; it does not import
// the engine. The daemon adapts its objects to these interfaces.
//
// # Endpoints
//
//	GET    /v1/status                       overview: volumes, caches, session count, running jobs
//	GET    /v1/volumes                      volumes with stats and hit ratios
//	GET    /v1/volumes/{name}               one volume and its running jobs
//	POST   /v1/volumes/{name}/flush         job: write every acknowledged write durably
//	POST   /v1/volumes/{name}/drain         job: write back all dirty data (with progress)
//	POST   /v1/volumes/{name}/mode          job: {"mode": "writethrough"}; leaving writeback drains first
//	GET    /v1/volumes/{name}/explain?lba=N why block N hits or misses, dirty or clean, where it lives
//	                                        (or ?offset=BYTES)
//	GET    /v1/volumes/{name}/advice        sizing advisor: estimated hit ratio at 0.25x..4x the cache's size
//	                                        and the size for ?target=0.9 (GET /v1/advice: every volume and cache)
//	GET    /v1/caches, /v1/caches/{name}    cache files: segments, journal pointers, failure state
//	POST   /v1/caches/{name}/detach         job: detach a cache (a healthy one writes back its dirty data first, with progress)
//	GET    /v1/sessions                     initiator sessions: initiator, portal, LUNs, in-flight commands
//	POST   /v1/reload                       job: {"dry_run": true} to only describe the plan
//	GET    /v1/config[?secrets=1]           the running configuration as TOML (CHAP secrets redacted unless secrets=1)
//	POST   /v1/stats/reset                  the counters the API shows count from now (not /metrics)
//	GET    /v1/jobs, /v1/jobs/{id}          running and the last 64 finished jobs
//	DELETE /v1/jobs/{id}                    cancel a job
//	GET    /metrics                         Prometheus exposition (also on Config.MetricsListen)
//	GET    /healthz                         {"ok": true}
//	GET    /, /explain?volume=V&lba=N       read-only HTML status page (also on the metrics listener)
//
// # Security
//
// The socket is created with mode 0600 (bound under a temporary name,
// restricted, then renamed into place) in a directory created 0755 if
// missing. A live socket at the path is never taken over (ErrSocketInUse);
// a stale one is replaced. The TCP listener exists only with a token and
// checks it in constant time. The metrics listener serves only /metrics and
// the read-only status page, which show the same figures.
//
// # CLI exit codes
//
// The cachelun CLI verbs built on Client (package admin/cli) exit with
//
//	0  success
//	1  the operation failed (the daemon refused it, or the job failed or was cancelled)
//	2  usage error (unknown verb or flag, missing or malformed argument)
//	3  the daemon is unreachable (no socket, connection refused, permission denied, no answer in --timeout)
//
// # Concurrency
//
// Server, Client and Latency are safe for concurrent use. NewServer starts
// no goroutine and does not call the backend. Serve owns every goroutine
// the server starts (HTTP servers, backend reads, jobs); when its context
// ends it cancels the jobs and waits for all of them, at most
// Config.ShutdownTimeout. Lock order: snapshotter.mu → Server.mu (a
// snapshot read is started under the snapshotter's lock); jobManager.mu is
// a leaf. No lock is held while the backend is called.
package admin
