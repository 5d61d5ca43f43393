//! The task of one client connection, written by hand so that an idle
//! client's task is a few pointers: the states that do I/O (the login, a
//! transaction, the ending) are boxed futures that own the session while
//! they run, and an idle session is polled directly by
//! [`Session::poll_request`]. (An `async` block would keep the space of
//! its largest state in every idle client's task.)
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::session::{End, Session};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub struct ClientTask(Stage);

enum Stage {
    Login(Boxed<Option<Box<Session>>>),
    Idle(Box<Session>),
    Busy(Boxed<(Box<Session>, Result<(), End>)>),
    Ending(Boxed<()>),
    Done,
}

impl ClientTask {
    pub(crate) fn new(login: Boxed<Option<Box<Session>>>) -> Self {
        ClientTask(Stage::Login(login))
    }
}

fn ending(s: Box<Session>, end: End) -> Stage {
    match s.finish_now(end) {
        None => Stage::Done,
        Some((s, end)) => Stage::Ending(Box::pin(s.finish(end))),
    }
}

impl Future for ClientTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stage = &mut self.get_mut().0;
        loop {
            *stage = match stage {
                Stage::Login(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(s)) => Stage::Idle(s),
                    Poll::Ready(None) => Stage::Done,
                },
                Stage::Idle(s) => match s.poll_request(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => {
                        let Stage::Idle(s) = std::mem::replace(stage, Stage::Done) else {
                            unreachable!("matched Idle above")
                        };
                        match r {
                            Ok(()) => Stage::Busy(Box::pin(s.transaction_owned())),
                            Err(end) => ending(s, end),
                        }
                    }
                },
                Stage::Busy(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready((s, Ok(()))) => Stage::Idle(s),
                    Poll::Ready((s, Err(end))) => ending(s, end),
                },
                Stage::Ending(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => Stage::Done,
                },
                Stage::Done => return Poll::Ready(()),
            };
        }
    }
}
