import type { ReactNode } from 'react';
import './globals.css';

export const metadata = {
  title: 'Team board — appsync-relay example',
  description: 'Next.js + Amplify server-side auth + AppSync Events through appsync-relay',
};

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
