package simnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// bootHTTP returns a boot function that serves handler on :80 for the
// node's lifetime.
func bootHTTP(nw *Network, handler http.Handler) sim.BootFunc {
	return func(n *sim.Node) error {
		l, err := nw.Listen(n, ":80")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: handler}
		if err := n.Go(func(ctx context.Context) { _ = srv.Serve(l) }); err != nil {
			return err
		}
		return n.Go(func(ctx context.Context) { <-ctx.Done(); _ = srv.Close() })
	}
}

func countEvents(s *sim.Simulation, sub string) int {
	n := 0
	for _, e := range s.Trace().Tail(sim.TraceTail) {
		if strings.Contains(e.What, sub) {
			n++
		}
	}
	return n
}

func TestHTTPOverSimnet(t *testing.T) {
	s := sim.New(t.Name(), 1)
	nw := New(s)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		// HTTP/1 handlers read the whole body before answering.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = w.Write(body)
	})
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
		for range 32 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	server, err := s.AddNode("server", bootHTTP(nw, mux))
	if err != nil {
		t.Fatal(err)
	}
	client, err := s.AddNode("client", nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: nw.Dialer(client), MaxIdleConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	// Concurrent requests with bodies of many sizes, each echoed intact.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			body := bytes.Repeat([]byte{byte('a' + i)}, i*5000)
			resp, err := hc.Post("http://server:80/echo", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, body) {
				t.Errorf("request %d: echoed %d bytes (err %v), want %d", i, len(got), err, len(body))
			}
		})
	}
	wg.Wait()

	// A 2 MiB response streams through the 256 KiB window.
	resp, err := hc.Get("http://server:80/big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 32*64<<10 {
		t.Fatalf("big response: %d bytes, %v", n, err)
	}

	// Keep-alive: sequential requests reuse a connection instead of dialling.
	dials := countEvents(s, "net dial conn=")
	for i := range 5 {
		resp, err := hc.Post("http://server:80/echo", "text/plain", strings.NewReader(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if got := countEvents(s, "net dial conn=") - dials; got > 0 {
		t.Errorf("5 sequential requests dialled %d new connections, want reuse", got)
	}

	// Across a partition a request times out; after the heal it works.
	if err := nw.Partition("client", "server"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://server:80/echo", strings.NewReader("x"))
	if _, err := hc.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("request across a partition: %v, want a deadline error", err)
	}
	cancel()
	nw.Heal("client", "server")
	resp, err = hc.Post("http://server:80/echo", "text/plain", strings.NewReader("healed"))
	if err != nil {
		t.Fatalf("request after heal: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "healed" {
		t.Fatalf("after heal: %q", got)
	}

	// A killed server refuses; a restarted one serves again.
	if err := server.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Post("http://server:80/echo", "text/plain", strings.NewReader("x")); err == nil {
		t.Error("request to a killed server succeeded")
	}
	if err := server.Restart(); err != nil {
		t.Fatal(err)
	}
	resp, err = hc.Post("http://server:80/echo", "text/plain", strings.NewReader("back"))
	if err != nil {
		t.Fatalf("request after restart: %v", err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "back" {
		t.Fatalf("after restart: %q", got)
	}
	tr.CloseIdleConnections()
	if err := s.Shutdown(); err != nil {
		t.Fatal(err)
	}
}
