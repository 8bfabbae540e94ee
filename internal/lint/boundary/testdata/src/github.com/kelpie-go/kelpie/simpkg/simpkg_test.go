package simpkg

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

// Integration tests run real components over loopback: allowed.
func TestLoopback(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if _, err := http.Get(srv.URL); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// Helpers in test files are allowed too.
func dialLoopback(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }

// A simulation test runs under the executor: no real sockets, closures
// included.
func TestSimCluster(t *testing.T) {
	net.Listen("tcp", ":0") // want `net\.Listen opens a real listening socket \[socket\]; .*TestSim\* functions run simulated`
	run(func() {
		http.Get("http://x") // want `http\.Get uses http\.DefaultClient.*TestSim\* functions run simulated`
	})
}

func run(f func()) { f() }

// Test files get only the socket exemptions, not exec.
func TestProcess(t *testing.T) {
	os.StartProcess("/bin/true", nil, nil) // want `os\.StartProcess starts a real process \[exec\]`
}
