//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm/guest"
	"golang.org/x/sys/unix"
)

// TestListenVsock opens the real vsock listener. Which outcome is right
// depends on the kernel, so the test takes both and checks each fully:
//   - a kernel with vsock (this project's CI machine has /dev/vsock and
//     CID 3) must give a listener that reports its port, refuses a second
//     bind of that port with a clear error, serves through connServer, and
//     closes cleanly, waking a blocked Accept with net.ErrClosed;
//   - a kernel without vsock must fail with an error wrapping
//     EAFNOSUPPORT, which is what serveVsock logs as "no vsock" and
//     carries on from.
//
// Nothing here connects: a machine cannot reach its own vsock listener
// without the loopback transport, and the serving loop is tested over unix
// sockets (listener_test.go).
func TestListenVsock(t *testing.T) {
	// VMADDR_PORT_ANY lets the kernel pick a free port, so the test never
	// collides with a real agent or another run.
	ln, err := listenVsock(unix.VMADDR_PORT_ANY)
	if err != nil {
		if !errors.Is(err, unix.EAFNOSUPPORT) {
			t.Fatalf("opening a vsock listener: %v; want a listener, or EAFNOSUPPORT from a kernel without vsock", err)
		}
		t.Logf("this kernel has no vsock, as reported: %v", err)
		return
	}
	defer ln.Close()
	addr, ok := ln.Addr().(vsockAddr)
	if !ok || ln.Addr().Network() != "vsock" || addr.port == unix.VMADDR_PORT_ANY || addr.cid != unix.VMADDR_CID_ANY {
		t.Fatalf("listener address %#v (%s)", ln.Addr(), ln.Addr())
	}
	if want := fmt.Sprintf("any:%d", addr.port); addr.String() != want {
		t.Fatalf("address %q, want %q", addr, want)
	}
	t.Logf("listening on vsock %s", addr)

	_, err = listenVsock(addr.port)
	if !errors.Is(err, unix.EADDRINUSE) || !strings.Contains(err.Error(), fmt.Sprintf("bind to port %d", addr.port)) {
		t.Fatalf("second listener on port %d: %v, want EADDRINUSE naming the port", addr.port, err)
	}

	// The device that names the guest's CID comes with the vsock core;
	// inside a container it may not be mapped, which is not an error of
	// the agent's.
	if _, statErr := os.Stat(vsockDevice); statErr == nil {
		cid, err := localCID()
		if err != nil {
			t.Fatalf("local CID: %v", err)
		}
		t.Logf("local CID %d (%d is none)", cid, uint32(unix.VMADDR_CID_ANY))
	}

	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		t.Fatalf("Accept returned with nobody connecting: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Accept")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v", err)
	}
	// The port is free again once closed.
	again, err := listenVsock(addr.port)
	if err != nil {
		t.Fatalf("listening on port %d after closing it: %v", addr.port, err)
	}

	// And connServer runs on the vsock listener as on any other, ending
	// cleanly when it is closed.
	s, _ := testConnServer(t, maxVsockConns)
	done := startServe(t, context.Background(), s, again)
	time.Sleep(50 * time.Millisecond)
	again.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve on vsock after Close: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve on vsock did not end when its listener closed")
	}
}

func TestVsockPortFrom(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    uint32
		bad     bool
	}{
		{"console=ttyS0 quiet", guest.DefaultVsockPort, false},
		{"kelpie.vsock_port=5000", 5000, false},
		{"kelpie.vsock_port=5000 kelpie.vsock_port=52", 52, false},
		{"kelpie.vsock_port=x", guest.DefaultVsockPort, true},
		{"kelpie.vsock_port=0", guest.DefaultVsockPort, true},
		{"kelpie.vsock_port=4294967295", guest.DefaultVsockPort, true}, // VMADDR_PORT_ANY
		{"kelpie.vsock_port=4294967296", guest.DefaultVsockPort, true},
		{"kelpie.vsock_port=7 kelpie.vsock_port=-1", 7, true},
		{"kelpie.vsock_port=-1 kelpie.vsock_port=7", 7, false},
	} {
		got, err := vsockPortFrom(tc.cmdline)
		if got != tc.want || (err != nil) != tc.bad {
			t.Errorf("vsockPortFrom(%q) = %d, %v; want %d, error %v", tc.cmdline, got, err, tc.want, tc.bad)
		}
		if err != nil && !strings.Contains(err.Error(), cmdlineVsockPortKey) {
			t.Errorf("vsockPortFrom(%q): error %q does not name the setting", tc.cmdline, err)
		}
	}
}

func TestLoadModulesTriesEveryModule(t *testing.T) {
	dir := t.TempDir()
	if listed, loaded, err := loadModules(filepath.Join(dir, "none")); listed != 0 || loaded != 0 || err != nil {
		t.Fatalf("no list: %d %d %v", listed, loaded, err)
	}
	// Two modules that cannot be opened: both are tried and reported, so a
	// broken virtio module does not keep the vsock ones from loading, nor
	// the reverse. (Nothing is handed to the host kernel's finit_module.)
	list := filepath.Join(dir, "modules")
	a, b := filepath.Join(dir, "a.ko"), filepath.Join(dir, "b.ko")
	if err := os.WriteFile(list, []byte(a+"\n"+b+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	listed, loaded, err := loadModules(list)
	if listed != 2 || loaded != 0 || err == nil || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), b) {
		t.Fatalf("two missing modules: listed %d loaded %d err %v", listed, loaded, err)
	}
	if err := os.WriteFile(list, []byte(strings.Repeat(a+"\n", maxModules+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadModules(list); err == nil || !strings.Contains(err.Error(), "the limit is") {
		t.Fatalf("over-long list: %v", err)
	}
}
