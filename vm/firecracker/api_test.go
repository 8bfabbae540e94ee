package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// apiServer is a Firecracker API stand-in on a Unix socket: it records each
// request's method, path and body, and answers with the status and body a
// test sets per "METHOD /path" (204 and no body by default).
type apiServer struct {
	sock string
	srv  *http.Server

	mu      sync.Mutex
	got     []recorded
	answers map[string]answer
}

type recorded struct {
	method, path, contentType string
	body                      map[string]any
}

type answer struct {
	status int
	body   string
}

func newAPIServer(t *testing.T) *apiServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &apiServer{sock: filepath.Join(dir, "api.sock"), answers: map[string]answer{}}
	ln, err := net.Listen("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = &http.Server{Handler: s}
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data, _ := io.ReadAll(r.Body)
	rec := recorded{method: r.Method, path: r.URL.Path, contentType: r.Header.Get("Content-Type")}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &rec.body); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"fault_message":"bad json: %v"}`, err)
			return
		}
	}
	s.mu.Lock()
	s.got = append(s.got, rec)
	a, ok := s.answers[r.Method+" "+r.URL.Path]
	s.mu.Unlock()
	if !ok {
		a = answer{status: http.StatusNoContent}
	}
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

func (s *apiServer) answer(key string, status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answers[key] = answer{status, body}
}

func (s *apiServer) last(t *testing.T) recorded {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.got) == 0 {
		t.Fatal("the server got no request")
	}
	return s.got[len(s.got)-1]
}

// TestClientRequests checks each call's method, path and exact body.
func TestClientRequests(t *testing.T) {
	s := newAPIServer(t)
	c := NewClient(s.sock)
	defer c.Close()
	ctx := context.Background()
	cases := []struct {
		name   string
		call   func() error
		method string
		path   string
		body   map[string]any
	}{
		{"machine config", func() error { return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256}) },
			"PUT", "/machine-config", map[string]any{"vcpu_count": 2.0, "mem_size_mib": 256.0, "smt": false}},
		{"boot source", func() error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k", InitrdPath: "/i", BootArgs: "quiet"})
		}, "PUT", "/boot-source", map[string]any{"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "quiet"}},
		{"drive", func() error {
			return c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: "/d", IsRootDevice: true, IsReadOnly: true})
		}, "PUT", "/drives/rootfs", map[string]any{"drive_id": "rootfs", "path_on_host": "/d", "is_root_device": true, "is_read_only": true}},
		{"vsock", func() error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "v.sock"}) },
			"PUT", "/vsock", map[string]any{"guest_cid": 3.0, "uds_path": "v.sock"}},
		{"start", func() error { return c.StartInstance(ctx) }, "PUT", "/actions", map[string]any{"action_type": "InstanceStart"}},
		{"pause", func() error { return c.PauseVM(ctx) }, "PATCH", "/vm", map[string]any{"state": "Paused"}},
		{"resume", func() error { return c.ResumeVM(ctx) }, "PATCH", "/vm", map[string]any{"state": "Resumed"}},
		{"snapshot create", func() error {
			return c.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: "s", MemFilePath: "m"})
		}, "PUT", "/snapshot/create", map[string]any{"snapshot_type": "Full", "snapshot_path": "s", "mem_file_path": "m"}},
		{"snapshot load", func() error {
			return c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "s", MemBackend: MemBackend{BackendType: "File", BackendPath: "m"}})
		}, "PUT", "/snapshot/load", map[string]any{"snapshot_path": "s", "mem_backend": map[string]any{"backend_type": "File", "backend_path": "m"}, "enable_diff_snapshots": false, "resume_vm": false}},
	}
	for _, tc := range cases {
		if err := tc.call(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		got := s.last(t)
		if got.method != tc.method || got.path != tc.path || got.contentType != "application/json" {
			t.Errorf("%s: sent %s %s (%s), want %s %s (application/json)", tc.name, got.method, got.path, got.contentType, tc.method, tc.path)
		}
		gb, _ := json.Marshal(got.body)
		wb, _ := json.Marshal(tc.body)
		if string(gb) != string(wb) {
			t.Errorf("%s: body %s, want %s", tc.name, gb, wb)
		}
	}
	if err := c.PutDrive(ctx, Drive{DriveID: "../x"}); err == nil {
		t.Error("a drive id with a slash was sent")
	}
}

func TestClientGets(t *testing.T) {
	s := newAPIServer(t)
	c := NewClient(s.sock)
	ctx := context.Background()
	s.answer("GET /version", 200, `{"firecracker_version":"1.7.0"}`)
	s.answer("GET /", 200, `{"id":"x","state":"Running","vmm_version":"1.7.0","app_name":"Firecracker"}`)
	if v, err := c.Version(ctx); err != nil || v != "1.7.0" {
		t.Errorf("version %q, %v", v, err)
	}
	if info, err := c.Instance(ctx); err != nil || info.State != "Running" || info.VMMVersion != "1.7.0" {
		t.Errorf("instance %+v, %v", info, err)
	}
	s.answer("GET /version", 200, `{}`)
	if _, err := c.Version(ctx); err == nil || !strings.Contains(err.Error(), "firecracker_version") {
		t.Errorf("empty version: %v", err)
	}
	s.answer("GET /version", 200, `not json`)
	if _, err := c.Version(ctx); err == nil || !strings.Contains(err.Error(), "decode") {
		t.Errorf("bad json: %v", err)
	}
	s.answer("GET /version", 200, `{"firecracker_version":"`+strings.Repeat("x", maxResponseBytes)+`"}`)
	if _, err := c.Version(ctx); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized answer: %v", err)
	}
}

// TestClientStatuses drives every call through every kind of failure
// status and checks the error names the call, the status and the fault.
func TestClientStatuses(t *testing.T) {
	s := newAPIServer(t)
	c := NewClient(s.sock)
	ctx := context.Background()
	calls := map[string]func() error{
		"PUT /machine-config":  func() error { return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128}) },
		"PUT /boot-source":     func() error { return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k"}) },
		"PUT /drives/rootfs":   func() error { return c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: "/d"}) },
		"PUT /vsock":           func() error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "v"}) },
		"PUT /actions":         func() error { return c.StartInstance(ctx) },
		"PATCH /vm":            func() error { return c.PauseVM(ctx) },
		"PUT /snapshot/create": func() error { return c.CreateSnapshot(ctx, SnapshotCreate{}) },
		"PUT /snapshot/load":   func() error { return c.LoadSnapshot(ctx, SnapshotLoad{}) },
		"GET /version": func() error {
			_, err := c.Version(ctx)
			return err
		},
		"GET /": func() error {
			_, err := c.Instance(ctx)
			return err
		},
	}
	statuses := []struct {
		status int
		body   string
		fault  string
	}{
		{400, `{"fault_message":"The requested operation is not supported after starting the microVM."}`, "not supported after starting"},
		{404, `{"fault_message":"Invalid request method and/or path"}`, "Invalid request method"},
		{500, `{"fault_message":"Internal error"}`, "Internal error"},
		{503, `plain text failure`, "plain text failure"},
		{200, ``, "(no body)"}, // a success status the endpoint does not promise
		{204, ``, "(no body)"},
	}
	for key, call := range calls {
		method, path, _ := strings.Cut(key, " ")
		want := 204
		if method == "GET" {
			want = 200
		}
		for _, st := range statuses {
			if st.status == want {
				continue
			}
			s.answer(key, st.status, st.body)
			err := call()
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Errorf("%s answering %d: %v, want an *APIError", key, st.status, err)
				continue
			}
			if ae.Status != st.status || ae.Method != method || ae.Path != path || !strings.Contains(ae.Fault, st.fault) {
				t.Errorf("%s answering %d: %+v", key, st.status, ae)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", st.status)) {
				t.Errorf("message does not give the status: %v", err)
			}
		}
		s.answer(key, want, `{"firecracker_version":"1.7.0"}`)
		if err := call(); err != nil {
			t.Errorf("%s answering %d: %v", key, want, err)
		}
	}
}

func TestClientNoSocket(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "missing.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.PauseVM(ctx)
	if err == nil || !strings.Contains(err.Error(), "missing.sock") {
		t.Errorf("no socket: %v", err)
	}
}

func TestParseVersion(t *testing.T) {
	if v, err := parseVersion("Firecracker v1.7.0\n\nSupported snapshot versions: v1.0.0\n"); err != nil || v != "1.7.0" {
		t.Errorf("got %q, %v", v, err)
	}
	for _, bad := range []string{"", "qemu 8.0", "Firecracker 1.7.0", "Firecracker v"} {
		if _, err := parseVersion(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestInstanceID(t *testing.T) {
	if got := instanceID("agent_7.vm"); got != "agent-7-vm" {
		t.Errorf("instanceID = %q", got)
	}
	if got := instanceID(strings.Repeat("a", 80)); len(got) != maxInstanceID {
		t.Errorf("long id kept %d bytes", len(got))
	}
}
