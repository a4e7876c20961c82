"""9001 / 9002: operator sign-in and sign-out (the ``sign_no`` every later call carries)."""

from __future__ import annotations

from adapters.nhsa.fields import Code, DateTime, Node


class SignIn(Node):
    opter_no: Code
    mac: str
    ip: str


class SignInInput(Node):
    signIn: SignIn


class SignInOut(Node):
    sign_time: DateTime
    sign_no: Code


class SignInOutput(Node):
    signinoutb: SignInOut


class SignOut(Node):
    sign_no: Code
    opter_no: Code


class SignOutInput(Node):
    signOut: SignOut


class SignOutOutput(Node):
    pass
