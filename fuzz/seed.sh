#!/bin/sh
# Builds fuzz/corpus/<target>/ seed directories from the repository: the
# RFC 4475 / 5118 messages, SIP messages shaped like those in tests/ and
# benches/, the shipped configs and exception lists. Idempotent; the grown
# corpora are git-ignored. Run from anywhere: sh fuzz/seed.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
c="$here/corpus"
mkdir -p "$c/scan" "$c/route" "$c/tcp_framing" "$c/import_line" "$c/config"
msgs=$(mktemp -d)
trap 'rm -rf "$msgs"' EXIT

# RFC 4475 torture tests and RFC 5118 IPv6 tests.
for f in "$repo"/tests/data/rfc4475/*.dat "$repo"/tests/data/rfc4475/rfc5118/*.dat; do
    [ -f "$f" ] || continue
    cp "$f" "$msgs/rfc-$(basename "$f" .dat)"
done

# printf '%b' turns \r\n into CRLF.
msg() { printf '%b' "$2" > "$msgs/$1"; }
# 87 bytes
sdp='v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n'
# An INVITE from the trunk to a configured line (tests/common invite()).
msg invite-trunk "INVITE sip:+4930901820@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-c1\r\nMax-Forwards: 70\r\nFrom: \"Caller\" <sip:+4915112345678@carrier.example>;tag=f-c1\r\nTo: <sip:+4930901820@carrier.example>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:+4915112345678@127.0.0.2:5070>\r\nContent-Type: application/sdp\r\nContent-Length: 87\r\n\r\n$sdp"
# The bench INVITE (compact From, Route set, PAI, our own X-CRM header).
msg invite-bench "INVITE sip:+4930901820@127.0.0.1:5060;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 69\r\nf: \"Caller\" <sip:+4915112345678@carrier.example;user=phone>;tag=1928301774\r\nTo: <sip:+4930901820@carrier.example;user=phone>\r\nRoute: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.2;lr>\r\nCall-ID: a84b4c76e66710@carrier.example\r\nCSeq: 314159 INVITE\r\nP-Asserted-Identity: <sip:+4915112345678@carrier.example>\r\nX-CRM-Verdict: log\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
# National caller, anonymous caller, outbound INVITE from the PBX.
msg invite-national "INVITE sip:+4930901820@127.0.0.1:5060 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-n1\r\nMax-Forwards: 70\r\nFrom: <sip:01709998887@carrier.example>;tag=x\r\nt: <sip:+4930901820@carrier.example>\r\ni: n1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n"
msg invite-anon "INVITE sip:+4930901820@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-a1\r\nMax-Forwards: 70\r\nFrom: \"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=a\r\nTo: <sip:+4930901820@carrier.example>\r\nCall-ID: a1\r\nCSeq: 1 INVITE\r\nPrivacy: id\r\nContent-Length: 0\r\n\r\n"
msg invite-pbx "INVITE sip:+4915112345678@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-o1;rport\r\nMax-Forwards: 70\r\nFrom: \"101\" <sip:+4930901820@127.0.0.1>;tag=o1\r\nTo: <sip:+4915112345678@127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 INVITE\r\nContact: <sip:101@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n"
# In-dialog requests carrying our Record-Route.
msg bye "BYE sip:+4915112345678@127.0.0.2:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-b1\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@127.0.0.1>;tag=o1\r\nTo: <sip:+4915112345678@127.0.0.1>;tag=t1\r\nCall-ID: o1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
msg refer "REFER sip:+4915112345678@127.0.0.2:5070 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK-r1\r\nRoute: <sip:127.0.0.1:5060;transport=tcp;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@127.0.0.1>;tag=o1\r\nTo: <sip:+4915112345678@127.0.0.1>;tag=t1\r\nCall-ID: o1\r\nCSeq: 3 REFER\r\nRefer-To: <sip:102@127.0.0.1>\r\nReferred-By: <sip:101@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
msg cancel "CANCEL sip:+4930901820@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-c1\r\nMax-Forwards: 70\r\nFrom: <sip:+4915112345678@carrier.example>;tag=f-c1\r\nTo: <sip:+4930901820@carrier.example>\r\nCall-ID: c1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
msg options "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-p1\r\nMax-Forwards: 0\r\nFrom: <sip:ping@carrier.example>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: p1\r\nCSeq: 7 OPTIONS\r\nProxy-Require: foo\r\nContent-Length: 0\r\n\r\n"
# Responses whose top Via is ours (branch prefix z9hG4bKsS, 127.0.0.1:5060).
msg resp-180 "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsS0123456789abcdef\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-c1;received=127.0.0.2;rport=5070\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:+4915112345678@carrier.example>;tag=f-c1\r\nTo: <sip:+4930901820@carrier.example>;tag=t1\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nX-CRM-Verdict: lead\r\nContent-Length: 0\r\n\r\n"
msg resp-200 "SIP/2.0 200 OK\r\nv: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKsSfeedface, SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK-o1;rport\r\nFrom: <sip:+4930901820@127.0.0.1>;tag=o1\r\nTo: <sip:+4915112345678@127.0.0.1>;tag=t9\r\nCall-ID: o1\r\nCSeq: 1 INVITE\r\nContact: <sip:+4915112345678@127.0.0.2:5070>\r\nContent-Type: application/sdp\r\nContent-Length: 87\r\n\r\n$sdp"

cp "$msgs"/* "$c/scan/"
cp "$msgs"/* "$c/route/"
# TCP: a byte choosing how many chunk-size bytes follow, the chunk sizes,
# then a stream of messages with pings / pongs between them.
i=0
for f in "$msgs"/invite-* "$msgs"/resp-* "$msgs"/bye "$msgs"/cancel; do
    i=$((i + 1))
    { printf '\003\001\007\045'; printf '\r\n\r\n'; cat "$f"; printf '\r\n'; cat "$msgs/resp-180"; } \
        > "$c/tcp_framing/stream-$i"
done
for f in "$msgs"/rfc-*; do
    { printf '\002\003\061'; cat "$f"; } > "$c/tcp_framing/$(basename "$f")"
done

# Exception lists: whole files and each line alone.
for f in "$repo/config/exceptions.txt" "$repo/deploy/docker/exceptions.txt"; do
    [ -f "$f" ] || continue
    base=$(basename "$(dirname "$f")")
    cp "$f" "$c/import_line/file-$base"
    n=0
    while IFS= read -r line; do
        n=$((n + 1))
        printf '%s\n' "$line" > "$c/import_line/line-$base-$n"
    done < "$f"
done
printf '%s\n' '0170 9998887; national' 'Boss@Example.COM ;' '+1 (212) 555-0100' '00442079460000; uk' \
    > "$c/import_line/mixed"

# Configs: the shipped ones.
for f in "$repo"/config/sipscreen.toml "$repo"/deploy/*/sipscreen.toml; do
    [ -f "$f" ] || continue
    cp "$f" "$c/config/$(basename "$(dirname "$f")").toml"
done
for t in scan route tcp_framing import_line config; do
    echo "$t: $(ls "$c/$t" | wc -l) seeds"
done
