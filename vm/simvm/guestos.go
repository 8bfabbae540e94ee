package simvm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/sim"
	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/guest"
)

// Limits of the simulated command set.
const (
	// MaxSleep bounds the sleep command's argument.
	MaxSleep = time.Hour
	// MaxRepeat bounds the repeat command's count, so output generation
	// stays bounded even though the output cap drops most of it.
	MaxRepeat = 1 << 20
)

type file struct {
	data []byte
	mode uint32
}

// Guest is the simulated guest operating system: a flat in-memory
// filesystem (directories exist implicitly as prefixes of file paths), the
// command set, and counters that a snapshot carries. It implements
// guest.Handler, so anything that can carry the guest protocol — the
// simulated VM's pipe, a test's fake hypervisor — can serve it.
type Guest struct {
	// fires reports whether a fault fires; nil never fires.
	fires func(sim.FaultKind) bool

	mu     sync.Mutex
	bootID uint64 // drawn at boot; a restored guest keeps its source's
	execs  uint64 // commands run since boot, across snapshots
	files  map[string]file
	bytes  int
}

// NewGuest returns a freshly booted guest called hostname. fires, when not
// nil, is consulted for the guest-side faults (vm.exec_timeout).
func NewGuest(hostname string, bootID uint64, fires func(sim.FaultKind) bool) *Guest {
	g := &Guest{fires: fires, bootID: bootID, files: map[string]file{}}
	// A fresh guest has the files a minimal Linux guest would.
	g.files["/etc/hostname"] = file{data: []byte(hostname + "\n"), mode: 0o644}
	g.bytes = len(hostname) + 1
	return g
}

// Info describes the agent for the handshake.
func (g *Guest) Info() guest.HelloReply {
	return guest.HelloReply{Agent: AgentVersion, Kernel: "sim", PID: 1}
}

func guestErr(code, format string, args ...any) error {
	return &guest.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Exec runs one command of the simulated command set.
func (g *Guest) Exec(ctx context.Context, req *guest.ExecRequest) (*guest.ExecResult, error) {
	timeout := req.Timeout
	if timeout == 0 {
		timeout = guest.DefaultExecTimeout
	}
	limit := req.MaxOutputBytes
	if limit == 0 {
		limit = guest.DefaultExecOutputBytes
	}
	g.mu.Lock()
	g.execs++
	g.mu.Unlock()
	timedOut := func() (*guest.ExecResult, error) {
		return &guest.ExecResult{ExitCode: -1, Signal: "killed", TimedOut: true, Duration: timeout}, nil
	}
	if g.fires != nil && g.fires(FaultExecTimeout) {
		// The command hangs until the agent kills it at its timeout.
		if err := sleepCtx(ctx, timeout); err != nil {
			return nil, err
		}
		return timedOut()
	}
	stdout := &vm.CappedBuffer{Max: limit}
	stderr := &vm.CappedBuffer{Max: limit}
	code, sleep := g.run(req, stdout, stderr)
	if sleep > 0 {
		if sleep > timeout {
			if err := sleepCtx(ctx, timeout); err != nil {
				return nil, err
			}
			return timedOut()
		}
		if err := sleepCtx(ctx, sleep); err != nil {
			return nil, err
		}
	}
	return &guest.ExecResult{
		ExitCode: code, Stdout: stdout.Bytes(), Stderr: stderr.Bytes(),
		StdoutTruncated: stdout.Truncated(), StderrTruncated: stderr.Truncated(), Duration: sleep,
	}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run executes the command and returns its exit code and how long it
// sleeps before exiting.
func (g *Guest) run(req *guest.ExecRequest, stdout, stderr *vm.CappedBuffer) (int, time.Duration) {
	name := path.Base(req.Argv[0])
	args := req.Argv[1:]
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	abs := func(p string) string {
		if strings.HasPrefix(p, "/") {
			return path.Clean(p)
		}
		return path.Join(dir, p)
	}
	fail := func(format string, a ...any) (int, time.Duration) {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return 1, 0
	}
	switch name {
	case "true":
		return 0, 0
	case "false":
		return 1, 0
	case "echo":
		fmt.Fprintln(stdout, strings.Join(args, " "))
		return 0, 0
	case "echo-err":
		fmt.Fprintln(stderr, strings.Join(args, " "))
		return 0, 0
	case "pwd":
		fmt.Fprintln(stdout, dir)
		return 0, 0
	case "env":
		for _, e := range req.Env {
			fmt.Fprintln(stdout, e)
		}
		return 0, 0
	case "exit":
		if len(args) != 1 {
			return fail("usage: exit CODE")
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 || n > 255 {
			return fail("bad exit code %q: want 0..255", args[0])
		}
		return n, 0
	case "sleep":
		if len(args) != 1 {
			return fail("usage: sleep DURATION")
		}
		d, err := time.ParseDuration(args[0])
		if err != nil {
			secs, ferr := strconv.ParseFloat(args[0], 64)
			if ferr != nil || secs < 0 || secs > MaxSleep.Seconds() {
				return fail("bad duration %q", args[0])
			}
			d = time.Duration(secs * float64(time.Second))
		}
		if d < 0 || d > MaxSleep {
			return fail("duration %s outside 0..%s", d, MaxSleep)
		}
		return 0, d
	case "repeat":
		if len(args) != 2 {
			return fail("usage: repeat COUNT TEXT")
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 || n > MaxRepeat {
			return fail("bad count %q: want 0..%d", args[0], MaxRepeat)
		}
		line := []byte(args[1] + "\n")
		for i := 0; i < n; i++ {
			stdout.Write(line)
		}
		return 0, 0
	case "cat":
		if len(args) == 0 {
			stdout.Write(req.Stdin)
			return 0, 0
		}
		code := 0
		for _, a := range args {
			data, err := g.read(abs(a))
			if err != nil {
				fmt.Fprintf(stderr, "cat: %s: %v\n", a, err)
				code = 1
				continue
			}
			stdout.Write(data)
		}
		return code, 0
	case "write":
		if len(args) != 1 {
			return fail("usage: write FILE (contents on stdin)")
		}
		if err := g.write(abs(args[0]), req.Stdin, 0o644); err != nil {
			return fail("%s: %v", args[0], err)
		}
		return 0, 0
	case "rm":
		code := 0
		for _, a := range args {
			if !g.remove(abs(a)) {
				fmt.Fprintf(stderr, "rm: %s: no such file\n", a)
				code = 1
			}
		}
		return code, 0
	case "ls":
		d := dir
		if len(args) > 0 {
			d = abs(args[0])
		}
		entries, ok := g.list(d)
		if !ok {
			return fail("%s: no such directory", d)
		}
		for _, e := range entries {
			fmt.Fprintln(stdout, e.Name)
		}
		return 0, 0
	}
	fmt.Fprintf(stderr, "sim: %s: command not found\n", req.Argv[0])
	return 127, 0
}

var errNoFile = errors.New("no such file")

func (g *Guest) read(p string) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f, ok := g.files[p]
	if !ok {
		if g.isDirLocked(p) {
			return nil, errors.New("is a directory")
		}
		return nil, errNoFile
	}
	return append([]byte(nil), f.data...), nil
}

func (g *Guest) write(p string, data []byte, mode uint32) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.isDirLocked(p) {
		return errors.New("is a directory")
	}
	old, exists := g.files[p]
	if !exists && len(g.files) >= MaxGuestFiles {
		return fmt.Errorf("no space left on device: %d files, the limit is MaxGuestFiles=%d", len(g.files), MaxGuestFiles)
	}
	if n := g.bytes - len(old.data) + len(data); n > MaxGuestFSBytes {
		return fmt.Errorf("no space left on device: %d bytes, the limit is MaxGuestFSBytes=%d", n, MaxGuestFSBytes)
	}
	// A path under an existing file cannot be created.
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if _, isFile := g.files[d]; isFile {
			return fmt.Errorf("%s is not a directory", d)
		}
	}
	g.bytes += len(data) - len(old.data)
	g.files[p] = file{data: append([]byte(nil), data...), mode: mode}
	return nil
}

func (g *Guest) remove(p string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	f, ok := g.files[p]
	if ok {
		g.bytes -= len(f.data)
		delete(g.files, p)
	}
	return ok
}

func (g *Guest) isDirLocked(p string) bool {
	if p == "/" {
		return true
	}
	prefix := p + "/"
	for q := range g.files {
		if strings.HasPrefix(q, prefix) {
			return true
		}
	}
	return false
}

// list returns the entries directly under dir, sorted by name.
func (g *Guest) list(dir string) ([]guest.DirEntry, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.isDirLocked(dir) {
		return nil, false
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	seen := map[string]guest.DirEntry{}
	for q, f := range g.files {
		rest, ok := strings.CutPrefix(q, prefix)
		if !ok {
			continue
		}
		if name, _, sub := strings.Cut(rest, "/"); sub {
			seen[name] = guest.DirEntry{Name: name, Mode: 0o755, IsDir: true}
		} else {
			seen[rest] = guest.DirEntry{Name: rest, Size: int64(len(f.data)), Mode: f.mode}
		}
	}
	out := make([]guest.DirEntry, 0, len(seen))
	for _, e := range seen {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, true
}

// ReadFile serves the protocol's read.
func (g *Guest) ReadFile(ctx context.Context, req *guest.ReadFileRequest) (*guest.ReadFileReply, error) {
	data, err := g.read(path.Clean(req.Path))
	if errors.Is(err, errNoFile) {
		return nil, guestErr(guest.CodeNotFound, "%s: no such file", req.Path)
	}
	if err != nil {
		return nil, guestErr(guest.CodeFailed, "%s: %v", req.Path, err)
	}
	g.mu.Lock()
	mode := g.files[path.Clean(req.Path)].mode
	g.mu.Unlock()
	return &guest.ReadFileReply{Data: data, Mode: mode}, nil
}

// WriteFile serves the protocol's write. Parent directories are implicit,
// so MkdirAll changes nothing here.
func (g *Guest) WriteFile(ctx context.Context, req *guest.WriteFileRequest) (*guest.WriteFileReply, error) {
	mode := req.Mode
	if mode == 0 {
		mode = 0o644
	}
	if err := g.write(path.Clean(req.Path), req.Data, mode); err != nil {
		return nil, guestErr(guest.CodeFailed, "%s: %v", req.Path, err)
	}
	return &guest.WriteFileReply{Bytes: len(req.Data)}, nil
}

// List serves the protocol's directory listing.
func (g *Guest) List(ctx context.Context, req *guest.ListRequest) (*guest.ListReply, error) {
	entries, ok := g.list(path.Clean(req.Path))
	if !ok {
		return nil, guestErr(guest.CodeNotFound, "%s: no such directory", req.Path)
	}
	if len(entries) > guest.MaxListEntries {
		return &guest.ListReply{Entries: entries[:guest.MaxListEntries], Truncated: true}, nil
	}
	return &guest.ListReply{Entries: entries}, nil
}

// Counters returns the guest's boot id and how many commands it has run.
func (g *Guest) Counters() (bootID, execs uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bootID, g.execs
}

// Files returns a copy of every guest file, by path.
func (g *Guest) Files() map[string][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string][]byte, len(g.files))
	for p, f := range g.files {
		out[p] = append([]byte(nil), f.data...)
	}
	return out
}

// Save encodes the guest for a snapshot: the state section is bootID and
// execs (u64 each); the filesystem section is a file count (u32) then, in
// path order, path length (u16), path, mode (u32), data length (u32), data.
func (g *Guest) Save() (state, files []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	state = binary.LittleEndian.AppendUint64(nil, g.bootID)
	state = binary.LittleEndian.AppendUint64(state, g.execs)
	paths := make([]string, 0, len(g.files))
	for p := range g.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	files = binary.LittleEndian.AppendUint32(nil, uint32(len(paths)))
	for _, p := range paths {
		f := g.files[p]
		files = binary.LittleEndian.AppendUint16(files, uint16(len(p)))
		files = append(files, p...)
		files = binary.LittleEndian.AppendUint32(files, f.mode)
		files = binary.LittleEndian.AppendUint32(files, uint32(len(f.data)))
		files = append(files, f.data...)
	}
	return state, files
}

// LoadGuest decodes Save's two sections, checking every length and limit;
// fires is as for NewGuest.
func LoadGuest(state, files []byte, fires func(sim.FaultKind) bool) (*Guest, error) {
	if len(state) != 16 {
		return nil, fmt.Errorf("vmstate section is %d bytes, want 16", len(state))
	}
	g := &Guest{fires: fires, bootID: binary.LittleEndian.Uint64(state), execs: binary.LittleEndian.Uint64(state[8:]), files: map[string]file{}}
	r := bytes.NewReader(files)
	var count uint32
	if err := binary.Read(r, binary.LittleEndian, &count); err != nil {
		return nil, fmt.Errorf("guestfs section: file count: %v", err)
	}
	if count > MaxGuestFiles {
		return nil, fmt.Errorf("guestfs section: %d files, the limit is MaxGuestFiles=%d", count, MaxGuestFiles)
	}
	for i := uint32(0); i < count; i++ {
		var pl uint16
		if err := binary.Read(r, binary.LittleEndian, &pl); err != nil {
			return nil, fmt.Errorf("guestfs section: file %d: path length: %v", i, err)
		}
		if int(pl) > r.Len() {
			return nil, fmt.Errorf("guestfs section: file %d: path of %d bytes runs past the section", i, pl)
		}
		pb := make([]byte, pl)
		r.Read(pb)
		p := string(pb)
		if err := vm.CheckGuestPath(p); err != nil || p == "/" {
			return nil, fmt.Errorf("guestfs section: file %d: bad path %q", i, p)
		}
		var mode, dl uint32
		if err := binary.Read(r, binary.LittleEndian, &mode); err != nil {
			return nil, fmt.Errorf("guestfs section: %s: mode: %v", p, err)
		}
		if err := binary.Read(r, binary.LittleEndian, &dl); err != nil {
			return nil, fmt.Errorf("guestfs section: %s: length: %v", p, err)
		}
		if int64(dl) > int64(r.Len()) || g.bytes+int(dl) > MaxGuestFSBytes {
			return nil, fmt.Errorf("guestfs section: %s: %d bytes run past the section or the MaxGuestFSBytes=%d limit", p, dl, MaxGuestFSBytes)
		}
		data := make([]byte, dl)
		r.Read(data)
		if _, dup := g.files[p]; dup {
			return nil, fmt.Errorf("guestfs section: %s appears twice", p)
		}
		g.files[p] = file{data: data, mode: mode}
		g.bytes += int(dl)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("guestfs section: %d trailing bytes", r.Len())
	}
	// A file cannot also be a directory of another.
	for p := range g.files {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, isFile := g.files[d]; isFile {
				return nil, fmt.Errorf("guestfs section: %s is under the file %s", p, d)
			}
		}
	}
	return g, nil
}
