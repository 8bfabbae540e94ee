package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// cpioEntry is one parsed newc entry.
type cpioEntry struct {
	name         string
	mode         uint32
	rmaj, rmin   uint32
	data         []byte
	ino, nlink   uint32
	uid, gid, mt uint32
}

// parseNewc parses a newc archive independently of the writer.
func parseNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("offset %d field %d: %v", off, i, err)
		}
		return uint32(v)
	}
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at offset %d", off)
		}
		e := cpioEntry{ino: field(0), mode: field(1), uid: field(2), gid: field(3), nlink: field(4), mt: field(5),
			rmaj: field(9), rmin: field(10)}
		size, nameSize := int(field(6)), int(field(11))
		nameStart := off + 110
		e.name = string(b[nameStart : nameStart+nameSize-1])
		if b[nameStart+nameSize-1] != 0 {
			t.Fatalf("entry %q: name not NUL-terminated", e.name)
		}
		dataStart := (nameStart + nameSize + 3) &^ 3
		e.data = b[dataStart : dataStart+size]
		off = (dataStart + size + 3) &^ 3
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCpioWriter(t *testing.T) {
	var buf bytes.Buffer
	w := NewCpioWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("dev", 0o755))
	must(w.CharDev("dev/console", 0o600, 5, 1))
	must(w.File("init", 0o755, []byte("abcde"))) // odd length: padding
	must(w.File("/etc/empty", 0o644, nil))       // a leading slash is accepted
	must(w.Symlink("bin/sh", "/bin/busybox"))
	must(w.Close())
	if err := w.File("late", 0o644, nil); err != ErrClosed {
		t.Fatalf("write after close: %v", err)
	}
	if buf.Len()%4 != 0 {
		t.Fatalf("archive of %d bytes is not 4-aligned", buf.Len())
	}
	got := parseNewc(t, buf.Bytes())
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"dev", 0o40755, ""}, {"dev/console", 0o20600, ""}, {"init", 0o100755, "abcde"},
		{"etc/empty", 0o100644, ""}, {"bin/sh", 0o120777, "/bin/busybox"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || string(g.data) != w.data || g.uid != 0 || g.mt != 0 || g.ino != uint32(i+1) {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
	}
	if got[1].rmaj != 5 || got[1].rmin != 1 {
		t.Errorf("console device %d:%d", got[1].rmaj, got[1].rmin)
	}
	// The system's cpio, when present, must read the same archive.
	if cpio, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command(cpio, "-it", "--quiet")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -it: %v", err)
		}
		if names := strings.Fields(string(out)); strings.Join(names, " ") != "dev dev/console init etc/empty bin/sh" {
			t.Fatalf("cpio -it lists %q", names)
		}
	}
}

func TestCpioWriterRejectsBadEntries(t *testing.T) {
	w := NewCpioWriter(io.Discard)
	w.File("a", 0o644, nil)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{w.File("", 0o644, nil), "empty entry name"},
		{w.File("../etc/passwd", 0o644, nil), "not a clean path"},
		{w.File("a/../../b", 0o644, nil), "not a clean path"},
		{w.File("x\x00y", 0o644, nil), "NUL"},
		{w.File(strings.Repeat("n", MaxNameBytes+1), 0o644, nil), "MaxNameBytes=4096"},
		{w.File("a", 0o644, nil), "added twice"},
		{w.Symlink("l", ""), "target of 0 bytes"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("err = %v, want it to mention %q", tc.err, tc.want)
		}
	}
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic([]byte("#!/bin/sh\n"), "amd64"); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Fatalf("script: %v", err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Skipf("SKIP: cannot read the test binary: %v", err)
	}
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	if err := checkStatic(self, other); err == nil || !strings.Contains(err.Error(), "the guest is "+other) {
		t.Fatalf("wrong architecture: %v", err)
	}
	// A dynamically linked system binary is refused with the reason.
	for _, p := range []string{"/bin/ls", "/usr/bin/env"} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if err := checkStatic(data, runtime.GOARCH); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Fatalf("%s: %v", p, err)
		}
		return
	}
	t.Log("no dynamically linked system binary found; the dynamic case went unchecked")
}

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
)

// builtAgent builds the real guest agent once for the tests that need it.
func builtAgent(t *testing.T) string {
	t.Helper()
	agentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kelpie-image-test-")
		if err != nil {
			agentErr = err
			return
		}
		agentPath = filepath.Join(dir, "kelpie-guest")
		agentErr = BuildGuest(context.Background(), "", runtime.GOARCH, agentPath)
	})
	if agentErr != nil {
		t.Fatalf("building the guest agent: %v", agentErr)
	}
	return agentPath
}

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	var steps []string
	res, err := Build(context.Background(), Options{
		Output:    filepath.Join(dir, "sub", "initramfs.cpio.gz"),
		SourceDir: ".",
		Busybox:   NoBusybox,
		Progress:  func(s string) { steps = append(steps, s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 2 || !strings.Contains(steps[0], "building the guest agent") {
		t.Fatalf("progress steps %q", steps)
	}
	f, err := os.Open(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries := parseNewc(t, raw)
	if len(entries) != res.Entries {
		t.Fatalf("archive has %d entries, Result says %d", len(entries), res.Entries)
	}
	byName := map[string]cpioEntry{}
	for _, e := range entries {
		byName[e.name] = e
	}
	init, ok := byName["init"]
	if !ok || init.mode != 0o100755 || len(init.data) != res.GuestBytes {
		t.Fatalf("init entry %+v", init.name)
	}
	if err := checkStatic(init.data, runtime.GOARCH); err != nil {
		t.Fatalf("/init: %v", err)
	}
	for _, need := range []string{"dev/console", "proc", "sys", "tmp", "etc/passwd"} {
		if _, ok := byName[need]; !ok {
			t.Errorf("image lacks %s", need)
		}
	}
	if res.Busybox != "" || res.Applets != 0 {
		t.Fatalf("NoBusybox image has busybox %q", res.Busybox)
	}
}

func TestBuildIsReproducibleAndIncludesBusybox(t *testing.T) {
	bb := findBusybox(runtime.GOARCH)
	if bb == "" {
		t.Skip("SKIP: no static busybox on this host (Debian: apt-get install busybox-static); the busybox part of the image is untested here")
	}
	agent := builtAgent(t)
	dir := t.TempDir()
	var sums []string
	for i := range 2 {
		res, err := Build(context.Background(), Options{Output: filepath.Join(dir, fmt.Sprint(i)), GuestBinary: agent})
		if err != nil {
			t.Fatal(err)
		}
		if res.Busybox != bb || res.Applets < 100 {
			t.Fatalf("busybox %q with %d applets", res.Busybox, res.Applets)
		}
		sums = append(sums, res.SHA256)
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds of the same inputs differ: %s vs %s", sums[0], sums[1])
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Build(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "Output is empty") {
		t.Fatalf("no output: %v", err)
	}
	_, err := Build(context.Background(), Options{Output: filepath.Join(dir, "x"), GuestBinary: "/bin/ls", Busybox: NoBusybox})
	if err == nil || !strings.Contains(err.Error(), "guest agent /bin/ls") {
		t.Fatalf("dynamic agent: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Fatal("a failed build left an image behind")
	}
	_, err = Build(context.Background(), Options{Output: filepath.Join(dir, "y"), SourceDir: "/", Busybox: NoBusybox})
	if err == nil || !strings.Contains(err.Error(), "not inside the github.com/kelpie-go/kelpie module") {
		t.Fatalf("no source: %v", err)
	}
}

// fakeModuleTree writes a /lib/modules/RELEASE-like directory with dep as
// its modules.dep and every module it names, each holding "module PATH".
func fakeModuleTree(t *testing.T, dep string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "6.1.0-test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(dep, "\n") {
		if m, _, ok := strings.Cut(line, ":"); ok {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, m)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, m), []byte("module "+m), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// virtioDep is the virtio part of a Debian cloud kernel's modules.dep.
const virtioDep = `kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/unrelated.ko:
`

// vsockDep is its vsock part (6.1.0-57-cloud-amd64), with the transports
// the image must not take (VMCI, Hyper-V, loopback, the host side).
const vsockDep = `kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vsock_diag.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_vmci_transport.ko: kernel/net/vmw_vsock/vsock.ko kernel/drivers/misc/vmw_vmci/vmw_vmci.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/hv_sock.ko: kernel/net/vmw_vsock/vsock.ko kernel/drivers/hv/hv_vmbus.ko
kernel/net/vmw_vsock/vsock_loopback.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko
kernel/drivers/vhost/vhost_vsock.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/vhost/vhost.ko kernel/drivers/vhost/vhost_iotlb.ko kernel/net/vmw_vsock/vsock.ko
`

func moduleNames(mods []module) string {
	var names []string
	for _, m := range mods {
		names = append(names, strings.TrimSuffix(filepath.Base(m.path), ".ko"))
	}
	return strings.Join(names, " ")
}

func TestModulesInLoadOrder(t *testing.T) {
	for _, tc := range []struct {
		name, dep, want string
	}{
		{"virtio and vsock", virtioDep + vsockDep,
			// virtio and virtio_ring come once, for both channels.
			"virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console " +
				"vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"},
		// vsock built in, or not configured: nothing to add, no error.
		{"virtio only", virtioDep,
			"virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeModuleTree(t, tc.dep)
			mods, err := loadModules(dir, VirtioModules, VsockModules)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range mods {
				if !strings.HasPrefix(m.path, "lib/modules/6.1.0-test/kernel/") || string(m.data) != "module "+strings.TrimPrefix(m.path, "lib/modules/6.1.0-test/") {
					t.Fatalf("module %s: %q", m.path, m.data)
				}
			}
			if got := moduleNames(mods); got != tc.want {
				t.Fatalf("load order %q, want %q", got, tc.want)
			}
			// And they land in the image with the list the agent reads,
			// in that order.
			var buf bytes.Buffer
			if _, err := writeImage(&buf, []byte("agent"), nil, nil, mods); err != nil {
				t.Fatal(err)
			}
			zr, err := gzip.NewReader(&buf)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			files := map[string][]byte{}
			for _, e := range parseNewc(t, raw) {
				files[e.name] = e.data
			}
			list, ok := files[ModuleListPath]
			if !ok {
				t.Fatal("the image has no module list")
			}
			lines := strings.Fields(string(list))
			if len(lines) != len(mods) {
				t.Fatalf("module list %q for %d modules", list, len(mods))
			}
			for i, m := range mods {
				if lines[i] != "/"+m.path {
					t.Fatalf("module list line %d is %q, want /%s", i, lines[i], m.path)
				}
				if data, ok := files[m.path]; !ok || !bytes.Equal(data, m.data) {
					t.Fatalf("the image lacks %s", m.path)
				}
			}
		})
	}
}

func TestModulesErrors(t *testing.T) {
	dir := fakeModuleTree(t, virtioDep+vsockDep)
	if _, err := loadModules(dir, []string{"nope"}, nil); err == nil || !strings.Contains(err.Error(), "module nope is not in") {
		t.Fatalf("missing required module: %v", err)
	}
	if mods, err := loadModules(dir, nil, []string{"nope"}); err != nil || len(mods) != 0 {
		t.Fatalf("missing optional module: %v %v", moduleNames(mods), err)
	}
	// A required module still fails the build when only vsock is there.
	dir = fakeModuleTree(t, vsockDep)
	if _, err := loadModules(dir, VirtioModules, VsockModules); err == nil || !strings.Contains(err.Error(), "module virtio_pci is not in") {
		t.Fatalf("vsock without virtio: %v", err)
	}
}

// TestModulesFromTheHostKernel resolves VirtioModules and VsockModules
// against the real module trees on this host, which is what catches a
// module renamed or moved between kernel releases. A host with no module
// tree (a container, a kernel without modules) has nothing to check, and
// says so in the log; the fake trees above cover the logic everywhere.
func TestModulesFromTheHostKernel(t *testing.T) {
	deps, _ := filepath.Glob("/lib/modules/*/modules.dep")
	checked := 0
	for _, dep := range deps {
		dir := filepath.Dir(dep)
		b, err := os.ReadFile(dep)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "/virtio_console.ko:") || strings.Contains(string(b), ".ko.xz:") || strings.Contains(string(b), ".ko.zst:") {
			t.Logf("%s: virtio_console is built in or modules are compressed; not checked", dir)
			continue
		}
		mods, err := loadModules(dir, VirtioModules, VsockModules)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		names := " " + moduleNames(mods) + " "
		for _, want := range []string{"virtio_pci", "virtio_console"} {
			if !strings.Contains(names, " "+want+" ") {
				t.Errorf("%s: %s missing from %q", dir, want, names)
			}
		}
		if strings.Contains(string(b), "/vmw_vsock_virtio_transport.ko:") {
			// The core before the common code before the transport.
			i, j, k := strings.Index(names, " vsock "), strings.Index(names, " vmw_vsock_virtio_transport_common "), strings.Index(names, " vmw_vsock_virtio_transport ")
			if i < 0 || j < i || k < j {
				t.Errorf("%s: vsock modules missing or out of order in %q", dir, names)
			}
		}
		if strings.Contains(names, "vmci") || strings.Contains(names, "hv_") || strings.Contains(names, "loopback") || strings.Contains(names, "vhost") {
			t.Errorf("%s: a transport the guest does not use was taken: %q", dir, names)
		}
		t.Logf("%s: %s", dir, strings.TrimSpace(names))
		checked++
	}
	t.Logf("checked %d of the host's %d module trees", checked, len(deps))
}
