// Package simpkg stands for a package that runs under simulation: the
// allow-list grants it nothing.
package simpkg

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec" // want `import "os/exec" starts real processes \[exec\]; allowed only in cmd/kelpie, cmd/kelpie-dst, cmd/kelpie-guest, cmd/kelpie-lint, internal/executor, vm/qemu, vm/firecracker, vm/image`
	"plugin"  // want `import "plugin" loads native code at run time \[plugin\]; allowed in no package`
	"syscall"
)

func sockets(ctx context.Context) {
	net.Dial("tcp", "x:1")           // want `net\.Dial opens a real socket \[socket\]; allowed only in cmd/kelpie, cmd/kelpie-guest, vm/qemu, vm/firecracker \(internal/lint/boundary/allow\.go\); take a net\.Listener or a dial func`
	net.DialTimeout("tcp", "x:1", 0) // want `net\.DialTimeout opens a real socket \[socket\]`
	net.Listen("tcp", ":0")          // want `net\.Listen opens a real listening socket \[socket\]`
	net.ListenPacket("udp", ":0")    // want `net\.ListenPacket opens a real listening socket`
	net.ListenTCP("tcp", nil)        // want `net\.ListenTCP opens`
	net.ListenUDP("udp", nil)        // want `net\.ListenUDP opens`
	net.ListenUnix("unix", nil)      // want `net\.ListenUnix opens`
	net.FileListener(os.Stdin)       // want `net\.FileListener wraps a real socket file descriptor`
	net.LookupHost("example.com")    // want `net\.LookupHost asks the host's resolver`
	_ = net.DefaultResolver          // want `net\.DefaultResolver asks the host's resolver`
	var d net.Dialer
	d.Dial("tcp", "x:1")                         // want `\(net\.Dialer\)\.Dial opens a real socket`
	d.DialContext(ctx, "tcp", "x:1")             // want `\(net\.Dialer\)\.DialContext opens a real socket`
	(&net.ListenConfig{}).Listen(ctx, "tcp", "") // want `\(net\.ListenConfig\)\.Listen opens a real listening socket`
	tls.Dial("tcp", "x:1", nil)                  // want `tls\.Dial opens a real socket`
	var td tls.Dialer
	td.DialContext(ctx, "tcp", "x:1")         // want `\(tls\.Dialer\)\.DialContext opens a real socket`
	http.ListenAndServe(":0", nil)            // want `http\.ListenAndServe opens a real listening socket`
	http.ListenAndServeTLS(":0", "", "", nil) // want `http\.ListenAndServeTLS opens a real listening socket`
	srv := &http.Server{}
	srv.ListenAndServe()    // want `\(http\.Server\)\.ListenAndServe opens a real listening socket`
	httptest.NewServer(nil) // want `httptest\.NewServer opens a real loopback listening socket`
}

// References that are not calls are the same escape.
var dial = net.Dial // want `net\.Dial opens a real socket`

// A struct embedding the dialer still dials with it.
type embedded struct{ net.Dialer }

func promoted(e embedded) {
	e.Dial("tcp", "x:1") // want `\(net\.Dialer\)\.Dial opens a real socket`
}

func httpDefault() {
	http.Get("http://x")                              // want `http\.Get uses http\.DefaultClient, which dials real sockets \[http-default\]; allowed in no package \(internal/lint/boundary/allow\.go\); take an \*http\.Client`
	http.Post("http://x", "text/plain", nil)          // want `http\.Post uses http\.DefaultClient`
	http.Head("http://x")                             // want `http\.Head uses http\.DefaultClient`
	http.DefaultClient.Do(nil)                        // want `http\.DefaultClient dials real sockets \[http-default\]`
	_ = http.DefaultTransport                         // want `http\.DefaultTransport dials real sockets`
	_ = &http.Client{}                                // want `http\.Client literal without Transport uses http\.DefaultTransport`
	_ = &http.Transport{MaxIdleConns: 1}              // want `http\.Transport literal without DialContext or Dial dials real sockets`
	_ = http.Client{Transport: http.DefaultTransport} // want `http\.DefaultTransport dials real sockets`
}

func processes() {
	exec.Command("true")                   // the import is the one diagnostic for os/exec
	os.StartProcess("/bin/true", nil, nil) // want `os\.StartProcess starts a real process \[exec\]`
	os.FindProcess(1)                      // want `os\.FindProcess reaches a real process \[exec\]`
	syscall.Kill(1, syscall.SIGTERM)       // want `syscall\.Kill makes a raw system call \[syscall\]; allowed only in cmd/kelpie-guest, vm/qemu, vm/firecracker`
	_ = syscall.Stdin                      // want `syscall\.Stdin is raw operating-system state \[syscall\]`
	plugin.Open("x.so")
}

// allowed holds what simulated code does instead; none of it is reported.
func allowed(ctx context.Context, l net.Listener, dialFn func(context.Context, string, string) (net.Conn, error)) error {
	a, b := net.Pipe()
	_ = tls.Client(a, &tls.Config{})
	_ = tls.Server(b, &tls.Config{})
	srv := &http.Server{}
	go srv.Serve(l)
	c := &http.Client{Transport: &http.Transport{DialContext: dialFn}}
	_ = c
	r := &net.Resolver{PreferGo: true, Dial: dialFn}
	r.LookupHost(ctx, "node-1")
	// An interface's Dial is whatever the caller passed in.
	var dialer interface {
		Dial(network, addr string) (net.Conn, error)
	}
	if dialer != nil {
		dialer.Dial("tcp", "x:1")
	}
	// Errno constants are error values, not system calls: simnet returns
	// them so errors.Is matches the real network's errors.
	if errors.Is(ctx.Err(), syscall.ECONNRESET) {
		return syscall.EPIPE
	}
	_ = net.ParseIP("127.0.0.1")
	return nil
}
