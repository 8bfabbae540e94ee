// Command x is outside the Kelpie module: cmd/... is module-relative and
// does not match it.
package main

import "net"

func main() { net.Listen("tcp", ":0") } // want `net\.Listen opens a real listening socket`
