//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/kelpie-go/kelpie/internal/version"
	"github.com/kelpie-go/kelpie/vm/guest"
	"golang.org/x/sys/unix"
)

// handler is the agent's guest.Handler: real processes and real files.
type handler struct {
	init bool
}

func newHandler(init bool) *handler { return &handler{init: init} }

func (h *handler) Info() guest.HelloReply {
	r := guest.HelloReply{Agent: "kelpie-guest " + version.String(), PID: os.Getpid()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return r
}

func (h *handler) Exec(ctx context.Context, req *guest.ExecRequest) (*guest.ExecResult, error) {
	return runProcess(ctx, req)
}

func tooLarge(format string, args ...any) error {
	return &guest.Error{Code: guest.CodeTooLarge, Message: fmt.Sprintf(format, args...)}
}

func (h *handler) ReadFile(_ context.Context, req *guest.ReadFileRequest) (*guest.ReadFileReply, error) {
	f, err := os.Open(req.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, &guest.Error{Code: guest.CodeBadRequest, Message: fmt.Sprintf("%s is a directory", req.Path)}
	}
	if fi.Size() > guest.MaxFileBytes {
		return nil, tooLarge("%s is %d bytes, the limit is %d", req.Path, fi.Size(), guest.MaxFileBytes)
	}
	// Read one byte past the limit: files in /proc report size 0.
	data, err := io.ReadAll(io.LimitReader(f, guest.MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > guest.MaxFileBytes {
		return nil, tooLarge("%s is over the %d-byte limit", req.Path, guest.MaxFileBytes)
	}
	return &guest.ReadFileReply{Data: data, Mode: uint32(fi.Mode().Perm())}, nil
}

// WriteFile writes through a temporary file and a rename, so a reader never
// sees half a file.
func (h *handler) WriteFile(_ context.Context, req *guest.WriteFileRequest) (*guest.WriteFileReply, error) {
	dir := filepath.Dir(req.Path)
	if req.MkdirAll {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	mode := os.FileMode(req.Mode)
	if mode == 0 {
		mode = 0o644
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(req.Path)+".kelpie-*")
	if err != nil {
		return nil, err
	}
	name := tmp.Name()
	_, werr := tmp.Write(req.Data)
	if werr == nil {
		werr = tmp.Chmod(mode)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(name, req.Path)
	}
	if werr != nil {
		os.Remove(name)
		return nil, werr
	}
	return &guest.WriteFileReply{Bytes: len(req.Data)}, nil
}

func (h *handler) List(_ context.Context, req *guest.ListRequest) (*guest.ListReply, error) {
	f, err := os.Open(req.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// One entry past the limit tells us whether to report truncation.
	entries, err := f.ReadDir(guest.MaxListEntries + 1)
	if err != nil && err != io.EOF {
		return nil, err
	}
	var r guest.ListReply
	if len(entries) > guest.MaxListEntries {
		entries, r.Truncated = entries[:guest.MaxListEntries], true
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	r.Entries = make([]guest.DirEntry, 0, len(entries))
	for _, e := range entries {
		d := guest.DirEntry{Name: e.Name(), IsDir: e.IsDir()}
		if fi, err := e.Info(); err == nil {
			d.Size, d.Mode = fi.Size(), uint32(fi.Mode())
		}
		r.Entries = append(r.Entries, d)
	}
	return &r, nil
}
