package admin_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
)

// FuzzAPIRequests sends arbitrary methods, paths, queries and bodies to the
// API handler: it must never panic and must answer every request with a
// JSON body (metrics aside) and a status the API documents.
func FuzzAPIRequests(f *testing.F) {
	for _, seed := range []struct{ method, path, body string }{
		{"GET", "/v1/status", ""},
		{"POST", "/v1/volumes/db1/mode", `{"mode":"writethrough"}`},
		{"POST", "/v1/volumes/db1/mode", `{"mode":1}`},
		{"GET", "/v1/volumes/db1/explain?lba=0x10", ""},
		{"GET", "/v1/volumes/db1/explain?offset=-1", ""},
		{"GET", "/v1/volumes/db1/explain?lba=9223372036854775807", ""},
		{"POST", "/v1/reload", `{"dry_run":true}`},
		{"DELETE", "/v1/jobs/1", ""},
		{"POST", "/v1/caches/nvme0/detach", "x"},
		{"PUT", "/v1/volumes/%2e%2e/drain", "{}"},
		{"GET", "/", ""},
		{"GET", "/explain?volume=db1&lba=0", ""},
	} {
		f.Add(seed.method, seed.path, seed.body)
	}
	v := admintest.NewVolume("db1", "nvme0", 1<<20, 512)
	c := admintest.NewCache("nvme0", "")
	srv, err := admin.NewServer(admin.Config{Backend: admintest.NewBackend([]*admintest.Volume{v}, []*admintest.Cache{c})})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequest(method, "http://cachelun"+path, strings.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code >= 200 && rec.Code < 300, rec.Code >= 400 && rec.Code < 500, rec.Code == http.StatusServiceUnavailable:
		default:
			t.Fatalf("%s %s: status %d", method, path, rec.Code)
		}
		switch req.URL.Path {
		case "/metrics", "/", "/explain": // exposition format and the HTML page
			if rec.Code == 200 || rec.Code == http.StatusServiceUnavailable {
				return
			}
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: answer is not JSON: %q", method, path, rec.Body.String())
		}
	})
}
