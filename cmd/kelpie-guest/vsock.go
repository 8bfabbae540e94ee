//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/kelpie-go/kelpie/vm/guest"
	"golang.org/x/sys/unix"
)

// The vsock channel.
const (
	// cmdlineVsockPortKey moves the vsock port on the kernel command line;
	// a host configured with another port (vm/firecracker
	// Options.VsockPort) passes it this way.
	cmdlineVsockPortKey = "kelpie.vsock_port="
	// vsockBacklog is the listen backlog: connections the kernel holds
	// before the agent takes them.
	vsockBacklog = 16
	// vsockDevice answers which CID the guest has.
	vsockDevice = "/dev/vsock"
)

// serveVsock serves the protocol on the vsock port the kernel command line
// names (guest.DefaultVsockPort by default). A guest without vsock is
// normal (QEMU without vhost-vsock, a kernel without the modules): it logs
// one line and returns, and the serial channels carry the protocol.
func serveVsock(srv *guest.Server, cmdline string) {
	port, err := vsockPortFrom(cmdline)
	if err != nil {
		log.Printf("%v; using vsock port %d", err, port)
	}
	ln, err := listenVsock(port)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		log.Printf("no vsock in this kernel, serving on the serial channels only (%v)", err)
		return
	}
	if err != nil {
		log.Printf("vsock channel unavailable, serving on the serial channels only: %v", err)
		return
	}
	// Listening works without a vsock device (the core and transport
	// modules are enough), so say whether the hypervisor gave the guest one.
	switch cid, err := localCID(); {
	case err != nil:
		log.Printf("serving protocol %d..%d on vsock port %d (guest CID unknown: %v)", guest.MinProtocolVersion, guest.MaxProtocolVersion, port, err)
	case cid == unix.VMADDR_CID_ANY:
		log.Printf("listening on vsock port %d, but the VM has no vsock device (no guest CID); the host reaches the agent on the serial channels", port)
	default:
		log.Printf("serving protocol %d..%d on vsock port %d (guest CID %d)", guest.MinProtocolVersion, guest.MaxProtocolVersion, port, cid)
	}
	err = newConnServer(srv, maxVsockConns, log.Printf).serve(context.Background(), ln)
	log.Printf("vsock port %d: %v; serving on the serial channels only", port, err)
}

// vsockPortFrom reads kelpie.vsock_port=PORT from a kernel command line;
// the last one wins, as with kelpie.port=. A bad value is reported and
// leaves the port at what it was, so the agent still listens somewhere the
// host may look.
func vsockPortFrom(cmdline string) (uint32, error) {
	port := uint32(guest.DefaultVsockPort)
	var bad error
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, cmdlineVsockPortKey)
		if !ok {
			continue
		}
		// VMADDR_PORT_ANY asks the kernel to pick a port, which no host
		// could then find.
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 || n == unix.VMADDR_PORT_ANY {
			bad = fmt.Errorf("%s%s: want a port from 1 to %d", cmdlineVsockPortKey, v, uint32(unix.VMADDR_PORT_ANY-1))
			continue
		}
		port, bad = uint32(n), nil
	}
	return port, bad
}

var (
	_ net.Listener = (*vsockListener)(nil)
	_ net.Conn     = (*vsockConn)(nil)
)

// vsockListener is a net.Listener on an AF_VSOCK socket. The net package
// knows no vsock (net.FileListener refuses the family), so the socket is
// an os.File in non-blocking mode: the runtime poller then parks Accept
// without holding a thread, and Close wakes it.
type vsockListener struct {
	f      *os.File
	rc     syscall.RawConn
	addr   vsockAddr
	closed atomic.Bool
}

// listenVsock listens on port for any CID. Errors wrap the errno, so a
// kernel without vsock shows as EAFNOSUPPORT.
func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind to port %d: %w", port, err)
	}
	if err := unix.Listen(fd, vsockBacklog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen on port %d: %w", port, err)
	}
	addr := vsockAddr{cid: unix.VMADDR_CID_ANY, port: port}
	// The kernel's choice when asked for VMADDR_PORT_ANY.
	if sa, err := unix.Getsockname(fd); err == nil {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			addr = vsockAddr{cid: vm.CID, port: vm.Port}
		}
	}
	f := os.NewFile(uintptr(fd), "vsock:"+addr.String())
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vsock port %d: %w", port, err)
	}
	return &vsockListener{f: f, rc: rc, addr: addr}, nil
}

// Accept waits for the next connection.
func (l *vsockListener) Accept() (net.Conn, error) {
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	err := l.rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return aerr != unix.EAGAIN // false: wait until the poller says readable
	})
	if err == nil {
		err = aerr
	}
	if l.closed.Load() {
		// The poller's "file closed" is not net.ErrClosed; callers of a
		// net.Listener test for the latter.
		if err == nil {
			unix.Close(nfd)
		}
		err = net.ErrClosed
	}
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: err}
	}
	remote := vsockAddr{cid: unix.VMADDR_CID_ANY, port: unix.VMADDR_PORT_ANY}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = vsockAddr{cid: vm.CID, port: vm.Port}
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock:"+remote.String()), local: l.addr, remote: remote}, nil
}

// Close stops the listener; a blocked Accept returns net.ErrClosed.
func (l *vsockListener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}

// Addr is the address listened on (CID any).
func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is an accepted vsock stream. The os.File supplies Read, Write,
// Close and the deadlines, through the poller.
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// vsockAddr is a vsock endpoint, CID and port.
type vsockAddr struct{ cid, port uint32 }

func (a vsockAddr) Network() string { return "vsock" }

func (a vsockAddr) String() string {
	cid := strconv.FormatUint(uint64(a.cid), 10)
	if a.cid == unix.VMADDR_CID_ANY {
		cid = "any"
	}
	return cid + ":" + strconv.FormatUint(uint64(a.port), 10)
}

// localCID asks the vsock device for the guest's context id;
// VMADDR_CID_ANY means no transport has one (no vsock device).
func localCID() (uint32, error) {
	fd, err := unix.Open(vsockDevice, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", vsockDevice, err)
	}
	defer unix.Close(fd)
	cid, err := unix.IoctlGetUint32(fd, unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
	if err != nil {
		return 0, fmt.Errorf("%s: IOCTL_VM_SOCKETS_GET_LOCAL_CID: %w", vsockDevice, err)
	}
	return cid, nil
}
