// The board page, rendered on the server for every request: the adapter reads
// the session from the HTTP-only cookies (the relay in front has already put
// renewed tokens in them when an open socket renewed the session). The
// browser gets the username and the public events endpoint — never a token.
import { appConfig, boardChannel } from '@/lib/config';
import { currentSession } from '@/lib/session';
import { publishViaServer } from './actions';
import Board from './board';

export const dynamic = 'force-dynamic';

function time(exp: number) {
  return new Date(exp * 1000).toISOString().slice(11, 19) + ' UTC';
}

export default async function Page() {
  const c = appConfig();
  const session = await currentSession();
  return (
    <>
      <header>
        <h1>Team board</h1>
        {session ? (
          <>
            <span>
              Signed in as <strong id="user">{session.username}</strong>
            </span>
            <a id="sign-out" href="/api/auth/sign-out">
              Sign out
            </a>
          </>
        ) : (
          <a id="sign-in" className="button" href="/api/auth/sign-in">
            Sign in
          </a>
        )}
      </header>
      <main>
        {session ? (
          <>
            <p className="muted">
              Session read on the server from HTTP-only cookies; access token valid until{' '}
              <span id="session-exp" data-exp={session.accessTokenExp}>
                {time(session.accessTokenExp)}
              </span>
              . Rendered at <span id="rendered-at">{new Date().toISOString().slice(11, 19)} UTC</span>.
            </p>
            <Board
              endpoint={c.eventsEndpoint}
              region={c.region}
              channel={boardChannel(c, session.groups)}
              username={session.username}
              publishViaServer={publishViaServer}
            />
          </>
        ) : (
          <div className="panel">
            <p>
              Sign in with Cognito managed login to see the board. Every card posted by anyone signed in appears
              here live, through AppSync Events — the browser never holds a token.
            </p>
          </div>
        )}
      </main>
    </>
  );
}
