package firecracker

// A stand-in for the firecracker binary, so the backend's process
// management, API sequencing, serial and vsock channels and snapshot file
// handling run in tests on hosts without KVM. The test binary becomes the
// fake when started with KELPIE_FAKE_FIRECRACKER=1 (the backend passes it
// through Options.Env). It answers the API as Firecracker documents —
// including its 400 answers for calls in the wrong phase — and its "guest"
// is the simulated guest of package vm/simvm served with the real guest
// protocol on stdin/stdout (the guest's ttyS0) and on vsock port 1024.
// KELPIE_FAKE_FC_FAIL="METHOD /path" makes that call answer 400.

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/kelpie-go/kelpie/vm/guest"
	"github.com/kelpie-go/kelpie/vm/simvm"
)

const (
	fakeEnv     = "KELPIE_FAKE_FIRECRACKER"
	fakeFailEnv = "KELPIE_FAKE_FC_FAIL"
	fakeVersion = "1.7.0"
	// fakeFullMemEnv makes the fake write a memory file of the guest's
	// whole memory size, as Firecracker does, for benchmarks.
	fakeFullMemEnv = "KELPIE_FAKE_FC_FULL_MEM"
)

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) == "1" {
		os.Exit(fakeFirecracker(os.Args[1:]))
	}
	os.Exit(m.Run())
}

type fakeVMM struct {
	mu       sync.Mutex
	machine  *MachineConfig
	boot     *BootSource
	vsockUDS string
	started  bool
	paused   bool
	resumed  *sync.Cond
	g        *simvm.Guest
	fail     string
}

// fakeState is the fake's vmstate file.
type fakeState struct {
	Machine  MachineConfig `json:"machine"`
	VsockUDS string        `json:"vsock_uds"`
	State    []byte        `json:"state"`
	Files    []byte        `json:"files"`
}

func fakeFirecracker(args []string) int {
	fl := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	sock := fl.String("api-sock", "", "")
	fl.String("id", "", "")
	fl.String("log-path", "", "")
	fl.String("level", "", "")
	version := fl.Bool("version", false, "")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Printf("Firecracker v%s\n\nSupported snapshot versions: v1.0.0\n", fakeVersion)
		return 0
	}
	f := &fakeVMM{fail: os.Getenv(fakeFailEnv)}
	f.resumed = sync.NewCond(&f.mu)
	ln, err := net.Listen("unix", *sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	http.Serve(ln, f)
	return 1
}

func (f *fakeVMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	fault := func(status int, format string, args ...any) {
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"fault_message": fmt.Sprintf(format, args...)})
	}
	if key == f.fail {
		fault(400, "injected failure of %s", key)
		return
	}
	decode := func(v any) bool {
		d := json.NewDecoder(r.Body)
		d.DisallowUnknownFields()
		if err := d.Decode(v); err != nil {
			fault(400, "An error occurred when deserializing the json body of a request: %v", err)
			return false
		}
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	preBoot := func() bool {
		if f.started {
			fault(400, "The requested operation is not supported after starting the microVM.")
			return false
		}
		return true
	}
	switch {
	case key == "GET /version":
		json.NewEncoder(w).Encode(map[string]string{"firecracker_version": fakeVersion})
		return
	case key == "GET /":
		state := "Not started"
		if f.started {
			state = "Running"
			if f.paused {
				state = "Paused"
			}
		}
		json.NewEncoder(w).Encode(InstanceInfo{ID: "fake", State: state, VMMVersion: fakeVersion, AppName: "Firecracker"})
		return
	case key == "PUT /machine-config":
		var m MachineConfig
		if !preBoot() || !decode(&m) {
			return
		}
		if m.VCPUCount < 1 || m.VCPUCount > 32 || m.MemSizeMiB < 1 {
			fault(400, "The vCPU number is invalid!")
			return
		}
		f.machine = &m
	case key == "PUT /boot-source":
		var b BootSource
		if !preBoot() || !decode(&b) {
			return
		}
		f.boot = &b
	case strings.HasPrefix(key, "PUT /drives/"):
		var d Drive
		if !preBoot() || !decode(&d) {
			return
		}
		if _, err := os.Stat(d.PathOnHost); err != nil {
			fault(400, "Unable to create the block device: %v", err)
			return
		}
	case key == "PUT /vsock":
		var v Vsock
		if !preBoot() || !decode(&v) {
			return
		}
		if err := f.listenVsock(v.UDSPath); err != nil {
			fault(400, "Cannot create backend for vsock device: %v", err)
			return
		}
	case key == "PUT /actions":
		var a struct {
			ActionType string `json:"action_type"`
		}
		if !preBoot() || !decode(&a) {
			return
		}
		if a.ActionType != "InstanceStart" {
			fault(400, "unsupported action %q", a.ActionType)
			return
		}
		if f.boot == nil || f.machine == nil {
			fault(400, "Cannot start microvm without kernel configuration.")
			return
		}
		if _, err := os.Stat(f.boot.KernelImagePath); err != nil {
			fault(400, "Cannot load kernel due to invalid memory configuration or invalid kernel image: %v", err)
			return
		}
		f.g = simvm.NewGuest("fc", 1, nil)
		f.started = true
		go f.serveSerial()
	case key == "PATCH /vm":
		var s struct {
			State string `json:"state"`
		}
		if !decode(&s) {
			return
		}
		if !f.started {
			fault(400, "The requested operation is not supported before starting the microVM.")
			return
		}
		switch s.State {
		case "Paused":
			f.paused = true
		case "Resumed":
			f.paused = false
			f.resumed.Broadcast()
		default:
			fault(400, "unknown state %q", s.State)
			return
		}
	case key == "PUT /snapshot/create":
		var s SnapshotCreate
		if !decode(&s) {
			return
		}
		if !f.started || !f.paused {
			fault(400, "Cannot create a snapshot: the microVM is not paused.")
			return
		}
		state, files := f.g.Save()
		data, _ := json.Marshal(fakeState{Machine: *f.machine, VsockUDS: f.vsockUDS, State: state, Files: files})
		if err := os.WriteFile(s.SnapshotPath, data, 0o600); err != nil {
			fault(400, "Cannot save the microVM state: %v", err)
			return
		}
		mem := []byte(strings.Repeat("mem!", 1024))
		if os.Getenv(fakeFullMemEnv) == "1" {
			mem = make([]byte, f.machine.MemSizeMiB<<20)
			for i := 0; i < len(mem); i += 4096 {
				mem[i] = byte(i >> 12) // touched pages, as a running guest's are
			}
		}
		if err := os.WriteFile(s.MemFilePath, mem, 0o600); err != nil {
			fault(400, "Cannot save the memory: %v", err)
			return
		}
	case key == "PUT /snapshot/load":
		var s SnapshotLoad
		if !decode(&s) {
			return
		}
		if f.started || f.machine != nil || f.boot != nil {
			fault(400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
			return
		}
		if s.MemBackend.BackendType != "File" {
			fault(400, "unsupported memory backend %q", s.MemBackend.BackendType)
			return
		}
		data, err := os.ReadFile(s.SnapshotPath)
		if err != nil {
			fault(400, "Cannot open the snapshot file: %v", err)
			return
		}
		if _, err := os.Stat(s.MemBackend.BackendPath); err != nil {
			fault(400, "Cannot open the memory file: %v", err)
			return
		}
		var st fakeState
		if err := json.Unmarshal(data, &st); err != nil {
			fault(400, "Cannot deserialize the microVM state: %v", err)
			return
		}
		g, err := simvm.LoadGuest(st.State, st.Files, nil)
		if err != nil {
			fault(400, "Cannot restore the microVM state: %v", err)
			return
		}
		if err := f.listenVsock(st.VsockUDS); err != nil {
			fault(400, "Cannot restore the vsock device: %v", err)
			return
		}
		f.machine, f.g, f.started, f.paused = &st.Machine, g, true, !s.ResumeVM
		go f.serveSerial()
	default:
		fault(400, "Invalid request method and/or path: %s %s", r.Method, r.URL.Path)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handler gates the guest on the paused flag: a paused guest's vCPUs do
// not run, so requests wait for a resume.
type gatedGuest struct{ f *fakeVMM }

func (h gatedGuest) guest() *simvm.Guest {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	for h.f.paused {
		h.f.resumed.Wait()
	}
	return h.f.g
}

func (h gatedGuest) Info() guest.HelloReply {
	return guest.HelloReply{Agent: "kelpie-guest fake", Kernel: "fake", PID: 1}
}
func (h gatedGuest) Exec(ctx context.Context, r *guest.ExecRequest) (*guest.ExecResult, error) {
	return h.guest().Exec(ctx, r)
}
func (h gatedGuest) ReadFile(ctx context.Context, r *guest.ReadFileRequest) (*guest.ReadFileReply, error) {
	return h.guest().ReadFile(ctx, r)
}
func (h gatedGuest) WriteFile(ctx context.Context, r *guest.WriteFileRequest) (*guest.WriteFileReply, error) {
	return h.guest().WriteFile(ctx, r)
}
func (h gatedGuest) List(ctx context.Context, r *guest.ListRequest) (*guest.ListReply, error) {
	return h.guest().List(ctx, r)
}

func (f *fakeVMM) serveSerial() {
	srv := &guest.Server{Handler: gatedGuest{f}}
	srv.Serve(context.Background(), struct {
		io.Reader
		io.Writer
	}{os.Stdin, os.Stdout})
}

// listenVsock plays the host side of the vsock device: CONNECT 1024 reaches
// the guest agent, any other port is hung up on.
func (f *fakeVMM) listenVsock(uds string) error {
	ln, err := net.Listen("unix", uds)
	if err != nil {
		return err
	}
	f.vsockUDS = uds
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil || strings.TrimSpace(line) != fmt.Sprintf("CONNECT %d", DefaultVsockPort) {
					return
				}
				f.mu.Lock()
				up := f.g != nil
				f.mu.Unlock()
				if !up {
					return
				}
				io.WriteString(c, "OK 1073741824\n")
				srv := &guest.Server{Handler: gatedGuest{f}}
				srv.Serve(context.Background(), struct {
					io.Reader
					io.Writer
				}{br, c})
			}()
		}
	}()
	return nil
}
