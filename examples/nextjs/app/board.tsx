'use client';
// The live part: aws-amplify's `events` client on the page's own origin.
// It is given a placeholder API key, because the page has no token and needs
// none: the same-origin WebSocket carries the HTTP-only session cookies, and
// the relay replaces the placeholder with the user's Cognito token on every
// subscribe/publish before it reaches AppSync Events.
import { useActionState, useEffect, useRef, useState } from 'react';
import { Amplify } from 'aws-amplify';
import { events } from 'aws-amplify/data';
import { Hub } from 'aws-amplify/utils';
import type { PublishResult } from './actions';

// A type alias (not an interface) so it is assignable to Amplify's DocumentType.
type Card = {
  id: string;
  text: string;
  author: string;
  via: string;
  at: string;
};

type Channel = Awaited<ReturnType<typeof events.connect>>;

interface Props {
  endpoint: string;
  region: string;
  channel: string;
  username: string;
  publishViaServer: (previous: PublishResult | null, form: FormData) => Promise<PublishResult>;
}

export default function Board({ endpoint, region, channel, username, publishViaServer }: Props) {
  const [state, setState] = useState('Connecting');
  const [subscribed, setSubscribed] = useState(false);
  const [cards, setCards] = useState<Card[]>([]);
  const [wsError, setWsError] = useState('');
  const [text, setText] = useState('');
  const channelRef = useRef<Channel | null>(null);
  const [httpResult, postViaServer, posting] = useActionState(publishViaServer, null);
  useEffect(() => {
    if (httpResult?.ok) setText('');
  }, [httpResult]);

  useEffect(() => {
    Amplify.configure({
      API: {
        Events: {
          endpoint,
          region,
          defaultAuthMode: 'apiKey',
          apiKey: 'relay-injects-the-real-token', // never a real key: the relay removes it
        },
      },
    });
    const stopHub = Hub.listen('api', ({ payload }) => {
      if (payload.event === 'ConnectionStateChange') {
        setState(String((payload.data as { connectionState: string }).connectionState));
      }
    });
    let closed = false;
    let ch: Channel | undefined;
    (async () => {
      try {
        ch = await events.connect(channel);
        if (closed) return void ch.close();
        channelRef.current = ch;
        const sub = ch.subscribe({
          next: (msg) => {
            const card = msg.event as Card;
            setCards((all) => (all.some((c) => c.id === card.id) ? all : [card, ...all]));
          },
          // Amplify errors a subscription with `{errors: [{message}]}`; a
          // session that is over reads "Connection failed:
          // UnauthorizedException: signed_out" (and Amplify stops retrying).
          error: (e) => setWsError(String(e?.errors?.[0]?.message ?? e?.message ?? e)),
        });
        await sub.ready;
        if (!closed) setSubscribed(true);
      } catch (e) {
        setWsError(e instanceof Error ? e.message : String(e));
      }
    })();
    return () => {
      closed = true;
      stopHub();
      channelRef.current = null;
      ch?.close();
    };
  }, [endpoint, region, channel]);

  async function publishWs() {
    const value = text.trim();
    if (!value || !channelRef.current) return;
    const card: Card = { id: crypto.randomUUID(), text: value, author: username, via: 'WebSocket publish', at: new Date().toISOString() };
    try {
      await channelRef.current.publish(card);
      setText('');
    } catch (e) {
      setWsError(e instanceof Error ? e.message : String(e));
    }
  }

  return (
    <div id="board" data-subscribed={subscribed ? 'true' : 'false'} data-channel={channel}>
      <div className="panel">
        <div className="row" style={{ marginBottom: 10 }}>
          <strong>Channel</strong> <code>{channel}</code>
          <span id="status" className="status" data-state={state}>
            {state}
          </span>
          {wsError && (
            <span id="ws-error" className="muted">
              {wsError}
            </span>
          )}
        </div>
        <form action={postViaServer} className="row">
          <input
            id="card-text"
            name="text"
            type="text"
            placeholder="Write a card…"
            value={text}
            onChange={(e) => setText(e.target.value)}
            autoComplete="off"
          />
          <button id="post-ws" type="button" onClick={publishWs} disabled={!subscribed}>
            Post (WebSocket)
          </button>
          <button id="post-http" type="submit" className="secondary" disabled={posting}>
            Post via server action
          </button>
        </form>
        <p id="http-status" className="muted" data-status={httpResult ? String(httpResult.status) : ''}>
          {httpResult ? (httpResult.ok ? `server action: published (${httpResult.status})` : `server action failed: ${httpResult.status} ${httpResult.error ?? ''}`) : ' '}
        </p>
      </div>
      <ul id="cards" className="cards">
        {cards.map((c) => (
          <li key={c.id} className="card" data-id={c.id}>
            <div className="text">{c.text}</div>
            <div className="meta">
              {c.author} · {c.via} · {c.at.slice(11, 19)}
            </div>
          </li>
        ))}
      </ul>
    </div>
  );
}
