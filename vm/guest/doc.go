// Package guest is the wire protocol between Kelpie and the guest agent that
// runs as /init inside a microVM (cmd/kelpie-guest).
//
// The channel is a plain byte stream — in practice a serial port, because it
// is the one device every hypervisor and every kernel offers without extra
// drivers — so the protocol assumes nothing about message boundaries and
// survives garbage on the line. Every message is one frame: a four-byte magic,
// a big-endian payload length, a CRC-32C of the payload, and the payload,
// which is a JSON envelope. A reader that meets bytes that are not a valid
// frame (boot noise, a frame cut in half by a snapshot, a corrupted or
// oversized frame) reports it and scans forward to the next magic, so one bad
// frame never ends the session. Frames are limited to MaxFrameBytes.
//
// A session starts with a versioned handshake: the host offers a range of
// protocol versions and the guest answers with the one both speak, or an
// error naming both ranges. Requests carry the host's session number and an
// id; the guest runs up to MaxConcurrentRequests of them at once and answers
// each by id, so a Client multiplexes concurrent calls over one stream and
// drops answers meant for an earlier session (after a VM is restored from a
// snapshot the guest may still finish requests the old host sent).
//
// The guest side is Server, which decodes, validates and dispatches requests
// to a Handler that does the real work; errors, panics included, go back to
// the host as error responses with their message and never stop the server.
package guest
