// readableMail: MIME mail from other programs decoded for the terminal; other mail untouched.
import { describe, expect, test } from "bun:test";
import { readableMail } from "../lib/mime.ts";

const b64 = (s: string, enc: BufferEncoding = "utf8") => Buffer.from(s, enc).toString("base64").replace(/.{76}/g, "$&\n");

describe("readableMail", () => {
  test("mail without MIME and without encoded words in its header comes back exactly as it came: the assignment's format, a blank-line header, literal =?...?= in a body", () => {
    for (const mail of [
      "From: a@b\nTo: c@d\nSubject: hi\nReceived: 2026-12-01 : 04 : 27\nbody line\n=?utf-8?q?not_a_header?=\n",
      "From: a@b\nSubject: s\n\nContent-Transfer-Encoding: base64\n\naGk=\n",
      "From: a@b\n\n",
      "",
      "just text, no header\n",
    ])
      expect(readableMail(mail)).toBe(mail);
  });

  test("encoded words in header lines are decoded; the lines stay where they were", () => {
    const mail = "From: =?utf-8?q?J=C3=BCrgen?= <j@x>\nSubject: =?iso-8859-1?q?caf=E9?=\nTo: c@d\n\nbody\n";
    expect(readableMail(mail)).toBe("From: Jürgen <j@x>\nSubject: café\nTo: c@d\n\nbody\n");
  });

  test("a base64 body in UTF-8 and a quoted-printable one in Latin-1 are shown as text", () => {
    const utf8 = `From: a@b\nMIME-Version: 1.0\nContent-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: base64\n\n${b64("Grüße aus Köln\r\nzweite Zeile\r\n")}\n`;
    expect(readableMail(utf8)).toBe(`From: a@b\nMIME-Version: 1.0\nContent-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: base64\n\nGrüße aus Köln\nzweite Zeile\n`);
    const qp = "From: a@b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nCaf=E9 cr=E8me br=FBl=E9e, a soft=\n break, =3D and a lone = sign\n";
    expect(readableMail(qp).split("\n\n")[1]).toBe("Café crème brûlée, a soft break, = and a lone = sign\n");
  });

  test("multipart/mixed: the text part decoded, an attachment one line with its name, type and size", () => {
    const mail = [
      "From: a@b",
      "Subject: report",
      "MIME-Version: 1.0",
      'Content-Type: multipart/mixed; boundary="===============123=="',
      "",
      "This is a multi-part message in MIME format.",
      "--===============123==",
      'Content-Type: text/plain; charset="utf-8"',
      "Content-Transfer-Encoding: quoted-printable",
      "",
      "See the r=C3=A9sum=C3=A9 attached.",
      "--===============123==",
      "Content-Type: application/pdf",
      "Content-Transfer-Encoding: base64",
      'Content-Disposition: attachment; filename="cv.pdf"',
      "",
      b64("%PDF-1.4 0123456789"),
      "--===============123==--",
      "epilogue",
      "",
    ].join("\n");
    expect(readableMail(mail)).toBe(
      'From: a@b\nSubject: report\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="===============123=="\n\nSee the résumé attached.\n\n[attachment cv.pdf: application/pdf, 19 bytes]\n',
    );
  });

  test("multipart/alternative shows the plain text version only; nested in mixed too", () => {
    const alt = ["--alt", "Content-Type: text/plain", "", "plain words", "--alt", "Content-Type: text/html", "", "<p>html words</p>", "--alt--"].join("\n");
    const mail = `From: a@b\nContent-Type: multipart/mixed; boundary=mix\n\n--mix\nContent-Type: multipart/alternative; boundary=alt\n\n${alt}\n--mix--\n`;
    const out = readableMail(mail);
    expect(out).toContain("plain words");
    expect(out).not.toContain("html words");
  });

  test("a non-ASCII attachment name in RFC 2231's form, whole or in sections, and in encoded-words", () => {
    const part = (disposition: string) => `From: a@b\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: application/octet-stream\nContent-Disposition: ${disposition}\n\nabc\n--x--\n`;
    expect(readableMail(part("attachment; filename*=utf-8''d%C3%A4t%C3%A4.bin"))).toContain("[attachment dätä.bin: application/octet-stream, 3 bytes]");
    expect(readableMail(part("attachment; filename*0*=iso-8859-1'de'caf%E9; filename*1=\".txt\""))).toContain("[attachment café.txt: ");
    expect(readableMail(part('attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="'))).toContain("[attachment résumé.pdf: ");
    // A line break in a decoded name stays inside the one line.
    expect(readableMail(part("attachment; filename*=utf-8''a%0AFrom:%20x@y.txt"))).toContain("[attachment a From: x@y.txt: ");
  });

  test("a bounce's report and returned mail, and a mail forwarded as an attachment, are shown as text (helper-90)", () => {
    const returned = `From: al@x\nTo: nobody@y\nSubject: =?utf-8?q?r=C3=A9union?=\nContent-Transfer-Encoding: base64\n\n${b64("ça va?\n")}\n`;
    const bounce = [
      "From: MAILER-DAEMON@mx",
      "Subject: Undelivered Mail Returned to Sender",
      'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
      "",
      "--B",
      "Content-Type: text/plain",
      "",
      "I'm sorry to have to inform you...",
      "--B",
      "Content-Type: message/delivery-status",
      "",
      "Final-Recipient: rfc822; nobody@y",
      "Diagnostic-Code: smtp; 550 5.1.1 User unknown",
      "--B",
      "Content-Type: message/rfc822",
      'Content-Disposition: attachment; filename="returned.eml"',
      "",
      returned.trimEnd(),
      "--B--",
      "",
    ].join("\n");
    const out = readableMail(bounce);
    expect(out).toContain("I'm sorry to have to inform you...\n");
    expect(out).toContain("Diagnostic-Code: smtp; 550 5.1.1 User unknown\n");
    expect(out).toContain("Subject: réunion\n");
    expect(out).toContain("\nça va?\n");
    expect(out).not.toContain("[attachment");
  });

  test("encoded words: a folded pair is one decoded line; a decoded line break cannot make a header line of its own (helper-90)", () => {
    const folded = "From: a@b\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K?=\n =?UTF-8?Q?=C3=B6ln?=\nTo: c@d\n\nbody\n";
    expect(readableMail(folded)).toBe("From: a@b\nSubject: Grüße aus Köln\nTo: c@d\n\nbody\n");
    const plainFold = "From: a@b\nX-Long: one\n two\n\nbody\n";
    expect(readableMail(plainFold)).toBe(plainFold);
    const injected = "From: eve@evil\nSubject: =?utf-8?q?hello=0AFrom:_ceo@bank.example?=\n\nx\n";
    const out = readableMail(injected);
    expect(out).toBe("From: eve@evil\nSubject: hello From: ceo@bank.example\n\nx\n");
    expect(out.split("\n").filter((l) => l.startsWith("From:"))).toEqual(["From: eve@evil"]);
  });

  test("what cannot be decoded is shown as it came: malformed base64, an unknown charset, a multipart without its boundary lines", () => {
    const bad = "From: a@b\nContent-Transfer-Encoding: base64\n\nnot*base64!\n";
    expect(readableMail(bad)).toBe(bad);
    const unknown = `From: a@b\nContent-Type: text/plain; charset=x-no-such\nContent-Transfer-Encoding: base64\n\n${b64("hi")}\n`;
    expect(readableMail(unknown)).toBe(unknown);
    const noParts = "From: a@b\nContent-Type: multipart/mixed; boundary=zz\n\njust text\n";
    expect(readableMail(noParts)).toBe(noParts);
  });
});
