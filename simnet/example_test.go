package simnet_test

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/kelpie-go/kelpie/sim"
	"github.com/kelpie-go/kelpie/simnet"
)

// An unmodified net/http server and client talk over simnet: the server
// node listens on "server:80", the client dials through its Dialer.
func Example() {
	s := sim.New("example", 1)
	nw := simnet.New(s)
	_, err := s.AddNode("server", func(n *sim.Node) error {
		l, err := nw.Listen(n, ":80")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s from %s", r.URL.Query().Get("name"), n.Name())
		})}
		if err := n.Go(func(ctx context.Context) { _ = srv.Serve(l) }); err != nil {
			return err
		}
		return n.Go(func(ctx context.Context) { <-ctx.Done(); _ = srv.Close() })
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	client, err := s.AddNode("client", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	tr := &http.Transport{DialContext: nw.Dialer(client)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://server:80/?name=kelpie")
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))

	// A partition cuts both directions until Heal; requests across it wait
	// for the heal or their deadline.
	nw.Partition("client", "server")
	fmt.Println("partitioned:", nw.Partitioned("client", "server"))
	nw.Heal("client", "server")
	_ = s.Shutdown()
	// Output:
	// hello kelpie from server
	// partitioned: true
}
