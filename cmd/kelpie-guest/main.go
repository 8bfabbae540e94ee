//go:build linux

// Command kelpie-guest is the agent inside a Kelpie microVM. It runs as /init
// in the initramfs that `kelpie vm image build` produces: it mounts what
// processes need (/proc, /sys, /dev, /dev/pts, /tmp, /run), reaps orphaned
// processes as init must, and serves the vm/guest protocol (exec, file
// read/write/list, ping) on the channels the host reaches through the
// hypervisor: the second serial port (kelpie.port= on the kernel command
// line overrides it), a virtio-serial port named org.kelpie.agent when the
// image carries the kernel's virtio modules, which it loads first, and
// vsock port 1024 (guest.DefaultVsockPort; kelpie.vsock_port= overrides
// it) when the kernel has vsock, built in or from the image's modules. A
// guest without vsock is normal and only logged. It never exits on a bad
// request; if its serial channel fails repeatedly it powers the VM off, so
// the host sees a dead VM rather than a silent one.
//
// Outside a VM it serves the same protocol on a unix socket or on
// stdin/stdout, which is how its tests and a developer drive it:
//
//	kelpie-guest -listen /tmp/agent.sock
//	kelpie-guest -stdio
//	kelpie-guest -device /dev/ttyS1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"time"

	"github.com/kelpie-go/kelpie/internal/version"
	"github.com/kelpie-go/kelpie/vm/guest"
)

// Defaults for the VM's init.
const (
	// defaultPort is the agent's serial port: the second UART, because the
	// first is the kernel console.
	defaultPort = "/dev/ttyS1"
	// cmdlinePortKey selects another port on the kernel command line.
	cmdlinePortKey = "kelpie.port="
	// maxPortFailures is how many consecutive times the channel may fail
	// before init gives up and powers the VM off.
	maxPortFailures = 10
	// portRetryDelay spaces the attempts to reopen the channel.
	portRetryDelay = time.Second
)

func main() {
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("kelpie-guest: ")
	if os.Getpid() == 1 {
		runInit()
		return // unreachable: runInit powers off instead of returning
	}
	os.Exit(runCommand(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// runCommand is the agent run by hand or by a test, not as init.
func runCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("kelpie-guest", flag.ContinueOnError)
	fl.SetOutput(stderr)
	listen := fl.String("listen", "", "serve on this unix socket path")
	device := fl.String("device", "", "serve on this serial device (set to raw mode)")
	stdio := fl.Bool("stdio", false, "serve on stdin and stdout")
	showVersion := fl.Bool("version", false, "print the version and exit")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "kelpie-guest %s protocol %d..%d\n", version.String(), guest.MinProtocolVersion, guest.MaxProtocolVersion)
		return 0
	}
	modes := 0
	for _, set := range []bool{*listen != "", *device != "", *stdio} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		fmt.Fprintln(stderr, "kelpie-guest: give exactly one of -listen PATH, -device PATH or -stdio")
		return 2
	}
	h := newHandler(false)
	srv := &guest.Server{Handler: h, Logf: log.Printf}
	ctx := context.Background()
	switch {
	case *stdio:
		err := srv.Serve(ctx, struct {
			io.Reader
			io.Writer
		}{stdin, stdout})
		if errors.Is(err, io.EOF) {
			return 0
		}
		fmt.Fprintf(stderr, "kelpie-guest: %v\n", err)
		return 1
	case *device != "":
		f, err := openChannel(*device)
		if err != nil {
			fmt.Fprintf(stderr, "kelpie-guest: %v\n", err)
			return 1
		}
		err = srv.Serve(ctx, f)
		fmt.Fprintf(stderr, "kelpie-guest: %s: %v\n", *device, err)
		return 1
	default:
		ln, err := net.Listen("unix", *listen)
		if err != nil {
			fmt.Fprintf(stderr, "kelpie-guest: %v\n", err)
			return 1
		}
		err = newConnServer(srv, maxUnixConns, log.Printf).serve(ctx, ln)
		fmt.Fprintf(stderr, "kelpie-guest: %s: %v\n", *listen, err)
		return 1
	}
}

// runInit is the agent as the VM's init process. It serves on the serial
// port and, when the image carries the virtio modules, on a virtio-serial
// port too, and on vsock when the kernel has it; the host uses whichever
// answers (virtio and vsock are much faster than the UART). Every channel
// shares one guest.Server, so the agent's uptime is one number.
func runInit() {
	setupInit()
	srv := &guest.Server{Handler: newHandler(true), Logf: log.Printf}
	cmdline := readCmdline()
	listed, loaded, err := loadModules(moduleList)
	if err != nil {
		log.Printf("kernel modules: %d of %d loaded: %v", loaded, listed, err)
	}
	// vsock gets its own goroutine, started before the wait for the
	// virtio port, so that it never holds up the serial channels: on a
	// kernel without vsock, socket() may first have the kernel try to load
	// it on demand.
	go serveVsock(srv, cmdline)
	switch {
	case listed == 0:
		// A serial-only image.
	case loaded == 0:
		// Modules for another kernel release: no virtio port will come.
		log.Printf("virtio-serial channel unavailable: none of the image's %d modules loaded", listed)
	default:
		if vport, err := waitVirtioPort(); err != nil {
			log.Printf("virtio-serial channel unavailable: %v", err)
		} else {
			go serveChannel(srv, vport, false)
		}
	}
	serveChannel(srv, portFrom(cmdline), true)
}

// serveChannel serves one channel until it fails maxPortFailures times in
// a row; then, for the primary channel, it powers the VM off.
func serveChannel(srv *guest.Server, port string, primary bool) {
	failures := 0
	for failures < maxPortFailures {
		f, err := openChannel(port)
		if err != nil {
			failures++
			log.Printf("opening %s (attempt %d of %d): %v", port, failures, maxPortFailures, err)
			time.Sleep(portRetryDelay)
			continue
		}
		log.Printf("serving protocol %d..%d on %s", guest.MinProtocolVersion, guest.MaxProtocolVersion, port)
		start := time.Now()
		err = srv.Serve(context.Background(), f)
		f.Close()
		if time.Since(start) > time.Minute {
			failures = 0 // a channel that worked for a while is not failing
		}
		failures++
		log.Printf("%s: %v (failure %d of %d)", port, err, failures, maxPortFailures)
		time.Sleep(portRetryDelay)
	}
	if !primary {
		log.Printf("giving up on %s after %d failures", port, maxPortFailures)
		return
	}
	log.Printf("giving up on %s after %d failures; powering off", port, maxPortFailures)
	powerOff()
}

// readCmdline returns the kernel command line, "" if it cannot be read
// (every setting then has its default).
func readCmdline() string {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		log.Printf("reading the kernel command line: %v", err)
		return ""
	}
	return string(b)
}

// portFrom reads kelpie.port=PATH from the kernel command line; the last
// one wins, as with kernel parameters, so a VM's own command line can
// override the backend's.
func portFrom(cmdline string) string {
	port := defaultPort
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, cmdlinePortKey); ok && strings.HasPrefix(v, "/dev/") {
			port = v
		}
	}
	return port
}
